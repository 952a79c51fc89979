/*
 * tree_orphan: processes whose parent exited.
 *   A forked B and exited (the top reaped A): B, the top's grandchild, is
 *   an orphan of the job's init (ppid 1);
 *   R is a subreaper (PR_SET_CHILD_SUBREAPER): C forked D and exited (R
 *   reaped C), so D's parent is R. After restore R waits for D (exit 33).
 * Each checks its parent and the rest of who it is ("ident"); R checks D's
 * exit and that it is still a subreaper ("reaper").
 */
#define TARGET_NAME "tree_orphan"
#include "tree_common.h"
#include <sys/prctl.h>

static const char *const KEYS[] = {"ident", "reaper", NULL};
static const char *const PROCS[] = {"B", "D", "R", NULL};

static void settle(const char *name, pid_t want_ppid)
{
    while (getppid() != want_ppid) sleep_ms(5);
    struct ident was = ident_now();
    mark_set(name);
    wait_go_quiet();
    if (sabotage("ident")) setpgid(0, 0);
    struct ident now = ident_now();
    CHECK("ident", ident_eq(was, now) && now.ppid == want_ppid, "%s: was %s, now %s (parent should be %d)", name, ident_str(was), ident_str(now), (int)want_ppid);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    pid_t a = fork();
    if (a < 0) DIE_ERRNO("fork A");
    if (a == 0) {
        pid_t b = fork();
        if (b < 0) DIE_ERRNO("fork B");
        if (b == 0) {
            settle("B", 1);
            report_result("B");
            _exit(0);
        }
        _exit(0);
    }
    int st;
    if (waitpid(a, &st, 0) != a) DIE_ERRNO("waitpid A");

    pid_t r = fork();
    if (r < 0) DIE_ERRNO("fork R");
    if (r == 0) {
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) DIE_ERRNO("PR_SET_CHILD_SUBREAPER");
        pid_t me = getpid();
        pid_t c = fork();
        if (c < 0) DIE_ERRNO("fork C");
        if (c == 0) {
            pid_t d = fork();
            if (d < 0) DIE_ERRNO("fork D");
            if (d == 0) {
                settle("D", me);
                report_result("D");
                _exit(sabotage("reaper") ? 34 : 33);
            }
            _exit(0);
        }
        if (waitpid(c, &st, 0) != c) DIE_ERRNO("waitpid C");
        settle("R", getppid());
        int on = 0;
        CHECK("reaper", prctl(PR_GET_CHILD_SUBREAPER, &on) == 0 && on == 1, "R: PR_GET_CHILD_SUBREAPER says %d", on);
        pid_t w = waitpid(-1, &st, 0);
        CHECK("reaper", w > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 33, "R: waitpid for the adopted D: %d status %#x", (int)w, st);
        report_result("R");
        _exit(0);
    }
    await_set(PROCS);
    announce_ready();
    wait_go(NULL);
    collect_results(PROCS);
    pid_t w = waitpid(r, &st, 0);
    CHECK("reaper", w == r && WIFEXITED(st) && WEXITSTATUS(st) == 0, "waitpid R %d: %d status %#x", (int)r, (int)w, st);
    return finish();
}
