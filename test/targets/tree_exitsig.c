/*
 * tree_exitsig: exit signals and the parent-death signal.
 *   c_usr2  created by clone with exit signal SIGUSR2 (exits 11);
 *   c_none  created by clone with exit signal 0 (exits 12);
 *   M -> K  K set PR_SET_PDEATHSIG(SIGUSR1): when M exits after restore,
 *           K gets SIGUSR1 (and init becomes its parent).
 * Checks: field 38 of /proc/PID/stat of each clone child ("exitsig");
 * the parent gets SIGUSR2, not SIGCHLD, when c_usr2 exits, and nothing when
 * c_none does; both reaped with __WALL ("exitsig"); K's PR_GET_PDEATHSIG
 * and the signal's arrival ("pdeathsig").
 */
#define TARGET_NAME "tree_exitsig"
#include "tree_common.h"
#include <sched.h>
#include <sys/prctl.h>

static const char *const KEYS[] = {"exitsig", "pdeathsig", NULL};
static const char *const PROCS[] = {"K", NULL};

static volatile sig_atomic_t g_usr2, g_chld, g_usr1;
static void on_sig(int sig)
{
    if (sig == SIGUSR2) g_usr2++;
    if (sig == SIGCHLD) g_chld++;
    if (sig == SIGUSR1) g_usr1++;
}

static int poll_then_exit(void *arg)
{
    wait_go_quiet();
    _exit((int)(long)arg);
}

static char stack1[65536] __attribute__((aligned(16)));
static char stack2[65536] __attribute__((aligned(16)));

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);

    pid_t c_usr2 = clone(poll_then_exit, stack1 + sizeof stack1, SIGUSR2, (void *)11L);
    if (c_usr2 < 0) DIE_ERRNO("clone SIGUSR2");
    pid_t c_none = clone(poll_then_exit, stack2 + sizeof stack2, 0, (void *)12L);
    if (c_none < 0) DIE_ERRNO("clone 0");

    pid_t m = fork();
    if (m < 0) DIE_ERRNO("fork M");
    if (m == 0) {
        pid_t k = fork();
        if (k < 0) DIE_ERRNO("fork K");
        if (k == 0) {
            sigaction(SIGUSR1, &sa, NULL);
            if (prctl(PR_SET_PDEATHSIG, SIGUSR1) < 0) DIE_ERRNO("PR_SET_PDEATHSIG");
            mark_set("K");
            wait_go_quiet();
            if (sabotage("pdeathsig")) prctl(PR_SET_PDEATHSIG, 0);
            int sig = 0;
            prctl(PR_GET_PDEATHSIG, &sig);
            CHECK("pdeathsig", sig == SIGUSR1, "K: PR_GET_PDEATHSIG says %d", sig);
            write_filef("k.checked", "1\n");
            /* The signal comes as M exits, before init adopts K: wait for that, then a moment. */
            for (int i = 0; i < 3000 && getppid() != 1; i++) sleep_ms(10);
            for (int i = 0; i < 100 && !g_usr1; i++) sleep_ms(10);
            CHECK("pdeathsig", g_usr1 == 1 && getppid() == 1, "K: %d SIGUSR1 after its parent exited, parent now %d", (int)g_usr1, (int)getppid());
            report_result("K");
            _exit(0);
        }
        wait_go_quiet();
        if (wait_file("m.go") != 0 || wait_file("k.checked") != 0) _exit(2);
        _exit(0);
    }
    await_set(PROCS);
    sleep_ms(50);
    announce_ready();
    wait_go(NULL);

    CHECK("exitsig", stat_field(c_usr2, 38) == SIGUSR2 && stat_field(c_none, 38) == 0, "exit signals %lld and %lld (expected %d and 0)",
          stat_field(c_usr2, 38), stat_field(c_none, 38), SIGUSR2);
    int st;
    int chld0 = g_chld;
    pid_t w = waitpid(c_usr2, &st, __WALL);
    CHECK("exitsig", w == c_usr2 && WIFEXITED(st) && WEXITSTATUS(st) == 11, "c_usr2: waitpid %d status %#x", (int)w, st);
    for (int i = 0; i < 200 && !g_usr2; i++) sleep_ms(5);
    CHECK("exitsig", g_usr2 == (sabotage("exitsig") ? 2 : 1), "%d SIGUSR2 when c_usr2 exited", (int)g_usr2);
    w = waitpid(c_none, &st, __WALL);
    CHECK("exitsig", w == c_none && WIFEXITED(st) && WEXITSTATUS(st) == 12, "c_none: waitpid %d status %#x", (int)w, st);
    sleep_ms(20);
    CHECK("exitsig", g_chld == chld0 && g_usr2 == 1, "a clone child's exit sent SIGCHLD (%d) or more SIGUSR2 (%d)", g_chld - chld0, (int)g_usr2);
    write_filef("m.go", "1\n"); /* M may exit now: its SIGCHLD no longer counts */
    w = waitpid(m, &st, 0);
    CHECK("pdeathsig", w == m && WIFEXITED(st) && WEXITSTATUS(st) == 0, "M: waitpid %d status %#x", (int)w, st);
    collect_results(PROCS);
    return finish();
}
