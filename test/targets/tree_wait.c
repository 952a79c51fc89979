/*
 * tree_wait: a parent waiting on children in every state at the checkpoint.
 *   z_exit   exited with 7, not reaped (a zombie);
 *   z_sig    killed by SIGTERM, not reaped (a zombie);
 *   stopped  stopped by SIGSTOP, the stop not yet collected by the parent;
 *   tstp     stopped by SIGTSTP, the stop collected (waitpid WUNTRACED), in
 *            a process group of its own;
 *   live     running (polls for go, exits 5); `tree_wait W timer` gives it
 *            a POSIX timer on its parent's CPU clock (which crest refuses:
 *            the clock names another process), `tree_wait W MIB` MIB MiB
 *            of memory (a long dump), checked after restore ("live").
 * After restore the parent: no SIGCHLD came out of nowhere ("sigchld");
 * waitpid gets each zombie's exact status ("zombie"); the uncollected stop
 * is reported once, the collected one not again, both are state T
 * ("stop"); SIGCONT resumes them and WCONTINUED reports it, then they exit
 * 3 and 4 ("cont"); the live one exits 5 ("live").
 */
#define TARGET_NAME "tree_wait"
#include "tree_common.h"

static const char *const KEYS[] = {"sigchld", "zombie", "stop", "cont", "live", NULL};

static volatile sig_atomic_t g_chld;
static void on_chld(int sig)
{
    (void)sig;
    g_chld++;
}

static const char *g_extra;

/* A child that exits `code` once W/go and W/`file` exist (the parent says when). */
static pid_t spawn_poller(int code, const char *file)
{
    pid_t p = fork();
    if (p < 0) DIE_ERRNO("fork");
    if (p == 0) {
        unsigned char *mem = NULL;
        size_t len = 0;
        if (code == 5 && g_extra && strcmp(g_extra, "timer") == 0) {
            timer_t t;
            clockid_t parent_cpu;
            if (clock_getcpuclockid(getppid(), &parent_cpu) != 0) die("clock_getcpuclockid failed");
            if (timer_create(parent_cpu, NULL, &t) < 0) DIE_ERRNO("timer_create");
        } else if (code == 5 && g_extra) {
            len = (size_t)atoi(g_extra) << 20;
            mem = malloc(len);
            if (!mem) die("out of memory");
            for (size_t i = 0; i < len; i += 4096) mem[i] = (unsigned char)(i >> 12);
        }
        wait_go_quiet();
        for (size_t i = 0; i < len; i += 4096) {
            if (mem[i] != (unsigned char)(i >> 12)) _exit(6);
        }
        if (wait_file(file) != 0) _exit(2);
        _exit(code == 5 && sabotage("live") ? 9 : code);
    }
    return p;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_extra = argc > 2 ? argv[2] : NULL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) DIE_ERRNO("sigaction");
    siginfo_t si;

    pid_t z_exit = fork();
    if (z_exit < 0) DIE_ERRNO("fork");
    if (z_exit == 0) _exit(7);
    if (waitid(P_PID, z_exit, &si, WEXITED | WNOWAIT) < 0) DIE_ERRNO("waitid z_exit");

    pid_t z_sig = fork();
    if (z_sig < 0) DIE_ERRNO("fork");
    if (z_sig == 0) {
        for (;;) pause();
    }
    kill(z_sig, SIGTERM);
    if (waitid(P_PID, z_sig, &si, WEXITED | WNOWAIT) < 0) DIE_ERRNO("waitid z_sig");

    pid_t stopped = spawn_poller(3, "exit.stopped");
    kill(stopped, SIGSTOP);
    if (waitid(P_PID, stopped, &si, WSTOPPED | WNOWAIT) < 0) DIE_ERRNO("waitid stopped");

    pid_t tstp = spawn_poller(4, "exit.tstp");
    /* In a group of its own: SIGTSTP is discarded in an orphaned group (as the job's own may be). */
    if (setpgid(tstp, tstp) < 0) DIE_ERRNO("setpgid tstp");
    kill(tstp, SIGTSTP);
    int st;
    if (waitpid(tstp, &st, WUNTRACED) != tstp || !WIFSTOPPED(st)) die("tstp did not stop: %#x", st);

    pid_t live = spawn_poller(5, "exit.live");
    sleep_ms(100); /* every SIGCHLD of the above is in */
    int chld_before = g_chld;
    write_filef("children", "%d %d %d %d %d\n", (int)z_exit, (int)z_sig, (int)stopped, (int)tstp, (int)live);
    announce_ready();
    wait_go(NULL);

    CHECK("sigchld", g_chld == chld_before && !sabotage("sigchld"), "%d SIGCHLD came during the checkpoint and restore", g_chld - chld_before);
    if (sabotage("stop")) {
        kill(stopped, SIGCONT);
        sleep_ms(50);
    }
    CHECK("stop", stat_field(stopped, 3) == 'T' && stat_field(tstp, 3) == 'T', "states %c and %c, not T", (int)stat_field(stopped, 3), (int)stat_field(tstp, 3));

    pid_t w = waitpid(z_exit, &st, 0);
    CHECK("zombie", w == z_exit && WIFEXITED(st) && WEXITSTATUS(st) == (sabotage("zombie") ? 8 : 7), "z_exit: waitpid %d status %#x (expected exit 7)", (int)w, st);
    w = waitpid(z_sig, &st, 0);
    CHECK("zombie", w == z_sig && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "z_sig: waitpid %d status %#x (expected SIGTERM)", (int)w, st);

    w = waitpid(stopped, &st, WUNTRACED | WNOHANG);
    CHECK("stop", w == stopped && WIFSTOPPED(st) && WSTOPSIG(st) == SIGSTOP, "stopped: waitpid WUNTRACED %d status %#x (expected its SIGSTOP stop)", (int)w, st);
    w = waitpid(stopped, &st, WUNTRACED | WNOHANG);
    CHECK("stop", w == 0, "stopped: its stop reported twice (%d status %#x)", (int)w, st);
    w = waitpid(tstp, &st, WUNTRACED | WNOHANG);
    CHECK("stop", w == 0, "tstp: its collected stop reported again (%d status %#x)", (int)w, st);

    if (!sabotage("cont")) {
        kill(stopped, SIGCONT);
        kill(tstp, SIGCONT);
    }
    pid_t conts[2] = {stopped, tstp};
    for (int i = 0; i < 2; i++) {
        int r = -1;
        memset(&si, 0, sizeof si);
        for (int k = 0; k < 500 && si.si_pid == 0; k++) {
            r = waitid(P_PID, conts[i], &si, WCONTINUED | WNOHANG);
            if (si.si_pid == 0) sleep_ms(10);
        }
        CHECK("cont", r == 0 && si.si_pid == conts[i] && si.si_code == CLD_CONTINUED, "%d: waitid WCONTINUED %d pid %d code %d", (int)conts[i], r, (int)si.si_pid, si.si_code);
        kill(conts[i], SIGCONT);
        write_filef(i == 0 ? "exit.stopped" : "exit.tstp", "1\n");
        w = waitpid(conts[i], &st, 0);
        CHECK("cont", w == conts[i] && WIFEXITED(st) && WEXITSTATUS(st) == 3 + i, "%d: waitpid %d status %#x (expected exit %d)", (int)conts[i], (int)w, st, 3 + i);
    }
    write_filef("exit.live", "1\n");
    w = waitpid(live, &st, 0);
    CHECK("live", w == live && WIFEXITED(st) && WEXITSTATUS(st) == 5, "live: waitpid %d status %#x", (int)w, st);
    return finish();
}
