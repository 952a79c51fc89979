/*
 * tree_session: sessions and process groups made inside the job.
 *   L  leads a session (setsid) with
 *      A  leader of process group A,   B  a member of group A,
 *      C  in L's own group,
 *      E  an orphan (its parent D made group D, forked it, exited):
 *         parent init, group D (leader gone), session L;
 *   S  led a session, forked F and exited: F (parent init) and F's child G
 *      are in session S and group S, whose leader is gone;
 *   M  forked N, then called setsid: N (M's child) stayed in the job's
 *      outer session and group.
 * Every process records who it is (pid, ppid, pgid, sid) before the
 * checkpoint and checks it after restore ("ident"); the top one checks the
 * relations too ("tree").
 */
#define TARGET_NAME "tree_session"
#include "tree_common.h"

static const char *const KEYS[] = {"ident", "tree", NULL};
static const char *const PROCS[] = {"L", "A", "B", "C", "E", "F", "G", "N", "M", NULL};

/* Records who we are, says so, waits for go, checks it again. */
static void settle(const char *name)
{
    struct ident was = ident_now();
    char f[64];
    snprintf(f, sizeof f, "ident.%s", name);
    write_filef(f, "%d %d %d %d\n", (int)was.pid, (int)was.ppid, (int)was.pgid, (int)was.sid);
    mark_set(name);
    wait_go_quiet();
    if (sabotage("ident")) setpgid(0, 0);
    struct ident now = ident_now();
    CHECK("ident", ident_eq(was, now), "%s: was %s, now %s", name, ident_str(was), ident_str(now));
}

static void child_done(const char *name)
{
    settle(name);
    report_result(name);
    _exit(0);
}

static struct ident read_ident(const char *name)
{
    char f[64], buf[128];
    struct ident i = {-1, -1, -1, -1};
    snprintf(f, sizeof f, "ident.%s", name);
    if (read_file(f, buf, sizeof buf) > 0) sscanf(buf, "%d %d %d %d", &i.pid, &i.ppid, &i.pgid, &i.sid);
    return i;
}

static void leader_l(void)
{
    if (setsid() < 0) DIE_ERRNO("setsid L");
    pid_t a = fork();
    if (a < 0) DIE_ERRNO("fork A");
    if (a == 0) {
        if (setpgid(0, 0) < 0) DIE_ERRNO("setpgid A");
        child_done("A");
    }
    if (wait_file("set.A") != 0) die("A never set up");
    pid_t b = fork();
    if (b < 0) DIE_ERRNO("fork B");
    if (b == 0) {
        if (setpgid(0, a) < 0) DIE_ERRNO("setpgid B");
        child_done("B");
    }
    pid_t c = fork();
    if (c < 0) DIE_ERRNO("fork C");
    if (c == 0) child_done("C");
    pid_t d = fork();
    if (d < 0) DIE_ERRNO("fork D");
    if (d == 0) {
        if (setpgid(0, 0) < 0) DIE_ERRNO("setpgid D");
        pid_t e = fork();
        if (e < 0) DIE_ERRNO("fork E");
        if (e == 0) {
            while (getppid() != 1) sleep_ms(5); /* orphaned once D is gone */
            child_done("E");
        }
        _exit(0);
    }
    int st;
    if (waitpid(d, &st, 0) != d) DIE_ERRNO("waitpid D");
    settle("L");
    pid_t kids[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        pid_t w = waitpid(kids[i], &st, 0);
        CHECK("tree", w == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0, "L: waitpid %d: %d status %#x", (int)kids[i], (int)w, st);
    }
    report_result("L");
    _exit(0);
}

static void leader_s(void)
{
    if (setsid() < 0) DIE_ERRNO("setsid S");
    pid_t f = fork();
    if (f < 0) DIE_ERRNO("fork F");
    if (f == 0) {
        pid_t g = fork();
        if (g < 0) DIE_ERRNO("fork G");
        if (g == 0) child_done("G");
        while (getppid() != 1) sleep_ms(5);
        settle("F");
        int st;
        pid_t w = waitpid(g, &st, 0);
        CHECK("tree", w == g && WIFEXITED(st) && WEXITSTATUS(st) == 0, "F: waitpid G %d: %d status %#x", (int)g, (int)w, st);
        report_result("F");
        _exit(0);
    }
    if (wait_file("set.G") != 0) die("G never set up");
    _exit(0); /* S goes: its session and group live on in F and G */
}

static void born_m(void)
{
    pid_t n = fork();
    if (n < 0) DIE_ERRNO("fork N");
    if (n == 0) child_done("N");
    if (wait_file("set.N") != 0) die("N never set up");
    if (setsid() < 0) DIE_ERRNO("setsid M");
    settle("M");
    int st;
    pid_t w = waitpid(n, &st, 0);
    CHECK("tree", w == n && WIFEXITED(st) && WEXITSTATUS(st) == 0, "M: waitpid N %d: %d status %#x", (int)n, (int)w, st);
    report_result("M");
    _exit(0);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    pid_t l = fork();
    if (l < 0) DIE_ERRNO("fork L");
    if (l == 0) leader_l();
    pid_t s = fork();
    if (s < 0) DIE_ERRNO("fork S");
    if (s == 0) leader_s();
    pid_t m = fork();
    if (m < 0) DIE_ERRNO("fork M");
    if (m == 0) born_m();
    int st;
    if (waitpid(s, &st, 0) != s) DIE_ERRNO("waitpid S");
    await_set(PROCS);
    struct ident top = ident_now();
    announce_ready();
    wait_go(NULL);
    collect_results(PROCS);
    struct ident L = read_ident("L"), A = read_ident("A"), B = read_ident("B"), C = read_ident("C"), E = read_ident("E");
    struct ident F = read_ident("F"), G = read_ident("G"), M = read_ident("M"), N = read_ident("N");
    if (sabotage("tree")) E.ppid = 0;
    CHECK("tree", L.sid == L.pid && L.pgid == L.pid && L.ppid == top.pid, "L: %s", ident_str(L));
    CHECK("tree", A.pgid == A.pid && A.sid == L.pid && B.pgid == A.pid && B.sid == L.pid && C.pgid == L.pid, "A: %s, B: %s, C: %s", ident_str(A), ident_str(B), ident_str(C));
    CHECK("tree", E.ppid == 1 && E.sid == L.pid && E.pgid != L.pid && E.pgid != E.pid && kill(E.pgid, 0) != 0, "E: %s", ident_str(E));
    CHECK("tree", F.ppid == 1 && F.sid == s && F.pgid == s && G.ppid == F.pid && G.sid == s && G.pgid == s, "F: %s, G: %s (S was %d)", ident_str(F), ident_str(G), (int)s);
    CHECK("tree", M.sid == M.pid && N.ppid == M.pid && N.sid == top.sid && N.pgid == top.pgid, "M: %s, N: %s, top: %s", ident_str(M), ident_str(N), ident_str(top));
    pid_t kids[2] = {l, m};
    for (int i = 0; i < 2; i++) {
        pid_t w = waitpid(kids[i], &st, 0);
        CHECK("tree", w == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0, "waitpid %d: %d status %#x", (int)kids[i], (int)w, st);
    }
    return finish();
}
