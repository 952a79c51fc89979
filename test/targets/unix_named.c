/*
 * unix_named: a server and two clients (its children) talking over unix
 * sockets with names (test/cr/unix.test.ts). Each process holds its sockets
 * at fixed fds:
 *   server P  10 stream listener on W/srv.sock (backlog 5), still listening
 *             11 accepted from C1 on W/srv.sock: 30000 bytes from C1 unread
 *             13 accepted from C2 on the abstract name @A (whose listener P
 *                closed): 20000 bytes from C2 unread
 *             14 accepted from C1 on W/old.sock (listener closed, its file
 *                unlinked): 9000 bytes from C1 unread
 *             15 accepted from C2 on the abstract seqpacket name @S:
 *                messages of 1, 100, 7, 3000 bytes from C2 unread
 *             16 seqpacket listener on @S (backlog 4), still listening
 *             17 datagram socket bound to W/log.sock (the logger): "p0" from an
 *                unnamed socket, "c1-0", "c1-1" from C1 (unnamed), "c2-0",
 *                "c2-1" from C2 (named @L), in that order, unread
 *   client C1 20 connected to W/srv.sock (P's 11): 50000 bytes from P unread
 *             23 bound to W/c1.sock, connected to W/old.sock (P's 14): 7000
 *                bytes from P unread
 *             25 datagram socket connected to W/log.sock
 *             26 datagram socket bound to W/self.sock and connected to
 *                itself: "self-msg" from itself unread
 *   client C2 21 connected to W/srv.sock, not accepted yet (pending)
 *             22 connected to @A (P's 13): 40000 bytes from P unread
 *             24 connected to @S (P's 15): messages of 5, 9, 2000 bytes
 *                from P unread
 *             25 datagram socket bound to @L, connected to W/log.sock: "ack"
 *                from W/log.sock unread
 * After go each checks its names (getsockname, getpeername), its queued data
 * byte for byte and message by message (with each datagram's sender name),
 * and that nothing more is queued; P accepts C2's pending connection and
 * sends "welcome" on it, which C2 waits for; P makes new connections to its
 * listeners and sends a datagram to its logger name; W/old.sock is still
 * gone and the other socket files are there with their modes (srv.sock 0640).
 * The children report their failures through W/c1-fail, W/c2-fail and their
 * exit status.
 * Modes (argv[2]): "pending-data": C2 sends "early" on its pending
 * connection (a checkpoint must refuse it); "outside": P also listens on
 * W/out.sock at fd 31 and, once W/accept-outside exists, accepts one
 * connection there at fd 30 (the test connects from outside the job); after
 * go P closes both.
 */
#define TARGET_NAME "unix_named"
#include "fd_common.h"
#include <signal.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static const char *const KEYS[] = {"names", "stream", "seqpacket", "dgram", "pending", "new", "files", "fdset", "child", NULL};

static uint64_t seed;
static const char *mode = "";
/* No empty message: one peeked at once (by a first --leave-running checkpoint) is invisible to MSG_PEEK after. */
static const size_t SP_UP[] = {1, 100, 7, 3000}; /* C2 -> P on @S */
static const size_t SP_DOWN[] = {5, 9, 2000};    /* P -> C2 on @S */

static unsigned char pat(int which, size_t i)
{
    uint64_t z = seed ^ ((uint64_t)which << 56) ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    z ^= z >> 29;
    return (unsigned char)(z * 0xbf58476d1ce4e5b9ULL >> 56);
}

struct name {
    struct sockaddr_un a;
    socklen_t len;
};

static struct name path_name(const char *file)
{
    struct name n = {.a = {.sun_family = AF_UNIX}};
    snprintf(n.a.sun_path, sizeof n.a.sun_path, "%s", wpath(file));
    n.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(n.a.sun_path) + 1);
    return n;
}

static struct name abstract_name(char tag)
{
    struct name n = {.a = {.sun_family = AF_UNIX}};
    int k = snprintf(n.a.sun_path + 1, sizeof n.a.sun_path - 1, "crest-unix-named-%c-%llx", tag, (unsigned long long)seed);
    n.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)k);
    return n;
}

/* A name as people read it ("@..." for an abstract one, "" for none). */
static const char *shown(const struct sockaddr_un *a, socklen_t len)
{
    static char bufs[4][128];
    static unsigned next;
    char *b = bufs[next++ % 4];
    size_t n = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
    if (n == 0) return "";
    if (a->sun_path[0] == 0) {
        b[0] = '@';
        memcpy(b + 1, a->sun_path + 1, n - 1);
        b[n] = 0;
    } else {
        snprintf(b, 128, "%.*s", (int)n, a->sun_path);
    }
    return b;
}

static const char *shown_name(const struct name *n)
{
    return n ? shown(&n->a, n->len) : "";
}

/* 1 when fd's own (peer 0) or peer's (peer 1) name is `want` (NULL: no name). */
static int name_is(int fd, int peer, const struct name *want, char *got, size_t cap)
{
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    int r = peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len);
    if (r != 0) {
        snprintf(got, cap, "%s: %s", peer ? "getpeername" : "getsockname", strerror(errno));
        return 0;
    }
    snprintf(got, cap, "'%s'", shown(&a, len));
    if (!want) return len <= offsetof(struct sockaddr_un, sun_path);
    return len == want->len && memcmp(&a, &want->a, len) == 0;
}

#define CHECK_NAME(fd, peer, want)                                                                                  \
    do {                                                                                                           \
        char got_[160];                                                                                            \
        CHECK("names", name_is((fd), (peer), (want), got_, sizeof got_), "%s of fd %d is %s, want '%s'",          \
              (peer) ? "the peer name" : "the name", (fd), got_, shown_name(want));                                \
    } while (0)

static int sock_at(int type, int at)
{
    return put_at(socket(AF_UNIX, type, 0), at, 0);
}

static void bind_to(int fd, const struct name *n)
{
    if (bind(fd, (const struct sockaddr *)&n->a, n->len) != 0) DIE_ERRNO("bind");
}

static void connect_to(int fd, const struct name *n)
{
    if (connect(fd, (const struct sockaddr *)&n->a, n->len) != 0) DIE_ERRNO("connect");
}

static int listener(int type, const struct name *n, int backlog)
{
    int l = socket(AF_UNIX, type, 0);
    if (l < 0) DIE_ERRNO("socket");
    bind_to(l, n);
    if (listen(l, backlog) != 0) DIE_ERRNO("listen");
    return l;
}

static void send_bytes(int fd, int which, size_t n)
{
    unsigned char *b = malloc(n);
    for (size_t i = 0; i < n; i++) b[i] = pat(which, i);
    write_all(fd, b, n, "send_bytes");
    free(b);
}

static void send_msgs(int fd, int which, const size_t *lens, size_t count)
{
    unsigned char b[4096];
    size_t off = 0;
    for (size_t m = 0; m < count; m++) {
        for (size_t i = 0; i < lens[m]; i++) b[i] = pat(which, off + i);
        if (send(fd, b, lens[m], 0) != (ssize_t)lens[m]) DIE_ERRNO("send");
        off += lens[m];
    }
}

/* Exactly `n` bytes of stream `which` queued on fd, nothing more (nonblocking reads). */
static int recv_bytes(int fd, int which, size_t n, char *why, size_t cap)
{
    unsigned char *b = malloc(n + 16);
    size_t got = 0;
    for (;;) {
        ssize_t k = recv(fd, b + got, n + 16 - got, MSG_DONTWAIT);
        if (k <= 0) break;
        got += (size_t)k;
    }
    size_t at = 0;
    while (at < got && at < n && b[at] == pat(which, at)) at++;
    free(b);
    if (got != n || at != n) {
        snprintf(why, cap, "fd %d held %zu bytes (want %zu), first difference at %zu", fd, got, n, at);
        return 0;
    }
    return 1;
}

/* Exactly the messages `lens` of stream `which` queued on fd, with their boundaries, nothing more. */
static int recv_msgs(int fd, int which, const size_t *lens, size_t count, char *why, size_t cap)
{
    unsigned char b[4096];
    size_t off = 0;
    for (size_t m = 0; m < count; m++) {
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (n != (ssize_t)lens[m]) {
            snprintf(why, cap, "fd %d message %zu: %zd bytes (%s), want %zu", fd, m, n, n < 0 ? strerror(errno) : "ok", lens[m]);
            return 0;
        }
        for (size_t i = 0; i < (size_t)n; i++) {
            if (b[i] != pat(which, off + i)) {
                snprintf(why, cap, "fd %d message %zu differs at byte %zu", fd, m, i);
                return 0;
            }
        }
        off += (size_t)n;
    }
    ssize_t more = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (more >= 0) {
        snprintf(why, cap, "fd %d: one more message of %zd bytes", fd, more);
        return 0;
    }
    return 1;
}

/* The next datagram on fd is `text`, from `from` (NULL: an unnamed sender). */
static int recv_from(int fd, const char *text, const struct name *from, char *why, size_t cap)
{
    char b[256];
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    ssize_t n = recvfrom(fd, b, sizeof b - 1, MSG_DONTWAIT, (struct sockaddr *)&a, &len);
    if (n < 0) {
        snprintf(why, cap, "fd %d: no datagram '%s' (%s)", fd, text, strerror(errno));
        return 0;
    }
    b[n] = 0;
    int named_ok = from ? len == from->len && memcmp(&a, &from->a, len) == 0 : len <= offsetof(struct sockaddr_un, sun_path);
    if (strcmp(b, text) != 0 || !named_ok) {
        snprintf(why, cap, "fd %d: datagram '%s' from '%s', want '%s' from '%s'", fd, b, shown(&a, len), text, shown_name(from));
        return 0;
    }
    return 1;
}

/* Waits up to `ms` for a file in W. */
static int wait_file(const char *file, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (access(wpath(file), F_OK) == 0) return 1;
        sleep_ms(10);
    }
    return 0;
}

/* The open fds below 30, as fdset() gives them. */
static void fdset_low(char *out, size_t cap)
{
    char all[1024];
    fdset(all, sizeof all);
    size_t used = 0;
    out[0] = 0;
    for (char *p = strtok(all, " "); p; p = strtok(NULL, " "))
        if (atoi(p) < 30) used += (size_t)snprintf(out + used, cap - used, "%s ", p);
}

static int reap(pid_t child)
{
    int st = 0;
    pid_t w;
    while ((w = waitpid(child, &st, 0)) < 0 && errno == EINTR) {
    }
    if (w != child) return 200;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return WIFSIGNALED(st) ? 100 + WTERMSIG(st) : 200;
}

static struct name srv, old, c1n, logn, selfn, outn, abs_a, abs_s, abs_l;
/* P's listeners on W/old.sock and @A (closed once their connections are accepted). */
static int l_old = -1, l_abs = -1;

static int child_finish(const char *file)
{
    if (g_failed) write_file(file, g_fail_msg, g_fail_len);
    return g_failed ? 1 : 0;
}

static int c1_main(void)
{
    char why[256], before[1024], after[1024];
    close(10), close(16), close(17), close(l_old), close(l_abs);
    if (strcmp(mode, "outside") == 0) close(31);
    connect_to(sock_at(SOCK_STREAM, 20), &srv);
    int s23 = sock_at(SOCK_STREAM, 23);
    bind_to(s23, &c1n);
    connect_to(s23, &old);
    connect_to(sock_at(SOCK_DGRAM, 25), &logn);
    if (send(25, "c1-0", 4, 0) != 4 || send(25, "c1-1", 4, 0) != 4) DIE_ERRNO("send c1 log");
    int s26 = sock_at(SOCK_DGRAM, 26);
    bind_to(s26, &selfn);
    connect_to(s26, &selfn);
    if (send(26, "self-msg", 8, 0) != 8) DIE_ERRNO("send self");
    send_bytes(20, 1, 30000);
    send_bytes(23, 3, 9000);
    write_file("c1-ready", "", 0);
    fdset(before, sizeof before);
    while (access(g_go_path, F_OK) != 0) sleep_ms(10);

    if (sabotage("names")) { int z = socket(AF_UNIX, SOCK_STREAM, 0); dup2(z, 20); }
    CHECK_NAME(20, 0, NULL);
    CHECK_NAME(20, 1, &srv);
    CHECK_NAME(23, 0, &c1n);
    CHECK_NAME(23, 1, &old);
    CHECK_NAME(25, 1, &logn);
    CHECK_NAME(26, 0, &selfn);
    CHECK_NAME(26, 1, &selfn);
    if (sabotage("stream")) { char x; recv(23, &x, 1, MSG_DONTWAIT); }
    CHECK("stream", recv_bytes(20, 2, 50000, why, sizeof why), "C1: %s", why);
    CHECK("stream", recv_bytes(23, 4, 7000, why, sizeof why), "C1: %s", why);
    if (sabotage("dgram")) { char x[16]; recv(26, x, sizeof x, MSG_DONTWAIT); }
    CHECK("dgram", recv_from(26, "self-msg", &selfn, why, sizeof why), "C1: %s", why);
    CHECK("dgram", send(25, "c1-after", 8, 0) == 8, "C1: the logger socket cannot send: %s", strerror(errno));
    fdset(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "C1's open fds were '%s', now '%s'", before, after);
    return child_finish("c1-fail");
}

static int c2_main(void)
{
    char why[256], before[1024], after[1024];
    connect_to(sock_at(SOCK_STREAM, 21), &srv);
    if (strcmp(mode, "pending-data") == 0 && send(21, "early", 5, 0) != 5) DIE_ERRNO("send early");
    connect_to(sock_at(SOCK_STREAM, 22), &abs_a);
    connect_to(sock_at(SOCK_SEQPACKET, 24), &abs_s);
    int s25 = sock_at(SOCK_DGRAM, 25);
    bind_to(s25, &abs_l);
    connect_to(s25, &logn);
    if (send(25, "c2-0", 4, 0) != 4 || send(25, "c2-1", 4, 0) != 4) DIE_ERRNO("send c2 log");
    send_bytes(22, 5, 20000);
    send_msgs(24, 6, SP_UP, 4);
    write_file("c2-ready", "", 0);
    fdset(before, sizeof before);
    while (access(g_go_path, F_OK) != 0) sleep_ms(10);

    CHECK_NAME(21, 0, NULL);
    CHECK_NAME(21, 1, &srv);
    CHECK_NAME(22, 1, &abs_a);
    CHECK_NAME(24, 1, &abs_s);
    CHECK_NAME(25, 0, &abs_l);
    CHECK_NAME(25, 1, &logn);
    CHECK("stream", recv_bytes(22, 7, 40000, why, sizeof why), "C2: %s", why);
    if (sabotage("seqpacket")) { char x; recv(24, &x, 1, MSG_DONTWAIT); }
    CHECK("seqpacket", recv_msgs(24, 8, SP_DOWN, 3, why, sizeof why), "C2: %s", why);
    CHECK("dgram", recv_from(25, "ack", &logn, why, sizeof why), "C2: %s", why);
    /* P accepts the pending connection after go and says welcome on it. */
    struct pollfd pf = {21, POLLIN, 0};
    char w[16] = {0};
    int ok = poll(&pf, 1, g_sabotage ? 5000 : 60000) == 1 && recv(21, w, sizeof w - 1, MSG_DONTWAIT) == 7 && strcmp(w, "welcome") == 0;
    CHECK("pending", ok, "C2: no 'welcome' on the connection that was waiting to be accepted (got '%s')", w);
    fdset(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "C2's open fds were '%s', now '%s'", before, after);
    return child_finish("c2-fail");
}

static void outside_tick(void)
{
    static int accepted;
    if (!accepted && access(wpath("accept-outside"), F_OK) == 0 && (poll_now(31, POLLIN) & POLLIN)) {
        put_at(accept(31, NULL, NULL), 30, 0);
        accepted = 1;
    }
}

/* A new connection to listener `lfd` (name `n`, type `type`) is accepted and carries a byte. */
static int new_connection(int lfd, const struct name *n, int type)
{
    int c = socket(AF_UNIX, type | SOCK_NONBLOCK, 0);
    if (c < 0) return 0;
    if (connect(c, (const struct sockaddr *)&n->a, n->len) != 0) {
        close(c);
        return 0;
    }
    struct pollfd pf = {lfd, POLLIN, 0};
    int a = poll(&pf, 1, 5000) == 1 ? accept(lfd, NULL, NULL) : -1;
    char x = 0;
    int ok = a >= 0 && send(c, "n", 1, 0) == 1 && recv(a, &x, 1, 0) == 1 && x == 'n';
    close(c);
    if (a >= 0) close(a);
    return ok;
}

/* Path W/file is a socket file (with mode `mode` unless -1), or (want 0) does not exist. */
static int file_is(const char *file, int want, int mode_bits, char *why, size_t cap)
{
    struct stat st;
    int there = lstat(wpath(file), &st) == 0;
    if (!want) {
        snprintf(why, cap, "W/%s exists", file);
        return !there;
    }
    snprintf(why, cap, "W/%s: %s, mode %o", file, there ? (S_ISSOCK(st.st_mode) ? "a socket" : "not a socket") : "missing", there ? (unsigned)(st.st_mode & 07777) : 0u);
    return there && S_ISSOCK(st.st_mode) && (mode_bits < 0 || (int)(st.st_mode & 07777) == mode_bits);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    if (argc > 2) mode = argv[2];
    seed = fresh_seed();
    signal(SIGPIPE, SIG_IGN);
    char why[256], before[1024], after[1024];
    srv = path_name("srv.sock");
    old = path_name("old.sock");
    c1n = path_name("c1.sock");
    logn = path_name("log.sock");
    selfn = path_name("self.sock");
    outn = path_name("out.sock");
    abs_a = abstract_name('a');
    abs_s = abstract_name('s');
    abs_l = abstract_name('l');

    put_at(listener(SOCK_STREAM, &srv, 5), 10, 0);
    if (chmod(wpath("srv.sock"), 0640) != 0) DIE_ERRNO("chmod");
    l_old = listener(SOCK_STREAM, &old, 2);
    l_abs = listener(SOCK_STREAM, &abs_a, 2);
    put_at(listener(SOCK_SEQPACKET, &abs_s, 4), 16, 0);
    int d = sock_at(SOCK_DGRAM, 17);
    bind_to(d, &logn);
    int u = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(u, "p0", 2, 0, (const struct sockaddr *)&logn.a, logn.len) != 2) DIE_ERRNO("sendto p0");
    close(u);
    if (strcmp(mode, "outside") == 0) put_at(listener(SOCK_STREAM, &outn, 1), 31, 0);
    fflush(stdout);

    pid_t c1 = fork();
    if (c1 < 0) DIE_ERRNO("fork");
    if (c1 == 0) _exit(c1_main());
    if (!wait_file("c1-ready", 30000)) die("C1 did not set up");
    put_at(accept(10, NULL, NULL), 11, 0);
    put_at(accept(l_old, NULL, NULL), 14, 0);
    close(l_old);
    if (unlink(wpath("old.sock")) != 0) DIE_ERRNO("unlink old.sock");
    send_bytes(11, 2, 50000);
    send_bytes(14, 4, 7000);

    pid_t c2 = fork();
    if (c2 < 0) DIE_ERRNO("fork");
    if (c2 == 0) {
        close(10), close(11), close(14), close(16), close(17), close(l_abs);
        if (strcmp(mode, "outside") == 0) close(31);
        _exit(c2_main());
    }
    if (!wait_file("c2-ready", 30000)) die("C2 did not set up");
    put_at(accept(l_abs, NULL, NULL), 13, 0);
    close(l_abs);
    put_at(accept(16, NULL, NULL), 15, 0);
    send_bytes(13, 7, 40000);
    send_msgs(15, 8, SP_DOWN, 3);
    if (sendto(17, "ack", 3, 0, (const struct sockaddr *)&abs_l.a, abs_l.len) != 3) DIE_ERRNO("sendto ack");
    fdset_low(before, sizeof before);
    announce_ready();
    wait_go(strcmp(mode, "outside") == 0 ? outside_tick : NULL);

    if (strcmp(mode, "outside") == 0) close(30), close(31);
    if (sabotage("names")) { int z = socket(AF_UNIX, SOCK_STREAM, 0); dup2(z, 14); }
    CHECK_NAME(10, 0, &srv);
    CHECK_NAME(11, 0, &srv);
    CHECK_NAME(11, 1, NULL);
    CHECK_NAME(13, 0, &abs_a);
    CHECK_NAME(13, 1, NULL);
    CHECK_NAME(14, 0, &old);
    CHECK_NAME(14, 1, &c1n);
    CHECK_NAME(15, 0, &abs_s);
    CHECK_NAME(16, 0, &abs_s);
    CHECK_NAME(17, 0, &logn);
    if (sabotage("stream")) { char x; recv(11, &x, 1, MSG_DONTWAIT); }
    CHECK("stream", recv_bytes(11, 1, 30000, why, sizeof why), "P: %s", why);
    CHECK("stream", recv_bytes(13, 5, 20000, why, sizeof why), "P: %s", why);
    CHECK("stream", recv_bytes(14, 3, 9000, why, sizeof why), "P: %s", why);
    CHECK("seqpacket", recv_msgs(15, 6, SP_UP, 4, why, sizeof why), "P: %s", why);
    if (sabotage("dgram")) sendto(17, "x", 1, 0, (const struct sockaddr *)&logn.a, logn.len);
    int dg = recv_from(17, "p0", NULL, why, sizeof why) && recv_from(17, "c1-0", NULL, why, sizeof why) &&
             recv_from(17, "c1-1", NULL, why, sizeof why) && recv_from(17, "c2-0", &abs_l, why, sizeof why) &&
             recv_from(17, "c2-1", &abs_l, why, sizeof why);
    CHECK("dgram", dg, "P's logger: %s", why);
    /* Nothing more but C1's "c1-after" (sent after go, maybe not yet). */
    char extra[64];
    ssize_t xn = recv(17, extra, sizeof extra, MSG_DONTWAIT);
    CHECK("dgram", xn < 0 || (xn == 8 && memcmp(extra, "c1-after", 8) == 0), "P's logger holds one more datagram of %zd bytes", xn);

    /* The connection that was waiting: accepted now, from C2 (unnamed), on srv.sock. */
    if (sabotage("pending")) { int z = socket(AF_UNIX, SOCK_STREAM, 0); dup2(z, 10); listen(10, 1); }
    struct pollfd pf = {10, POLLIN, 0};
    int pa = poll(&pf, 1, 0) == 1 ? accept(10, NULL, NULL) : -1;
    CHECK("pending", pa >= 0, "no connection was waiting on W/srv.sock");
    if (pa >= 0) {
        CHECK_NAME(pa, 0, &srv);
        CHECK_NAME(pa, 1, NULL);
        CHECK("pending", send(pa, "welcome", 7, 0) == 7, "cannot say welcome: %s", strerror(errno));
    }
    if (sabotage("new")) close(16);
    CHECK("new", new_connection(10, &srv, SOCK_STREAM), "a new connection to W/srv.sock failed");
    CHECK("new", new_connection(16, &abs_s, SOCK_SEQPACKET), "a new connection to the seqpacket name failed");
    int nd = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK("new", sendto(nd, "new", 3, 0, (const struct sockaddr *)&logn.a, logn.len) == 3, "a datagram to W/log.sock failed: %s", strerror(errno));
    close(nd);
    if (sabotage("files")) symlink("x", wpath("old.sock"));
    CHECK("files", file_is("old.sock", 0, -1, why, sizeof why), "%s", why);
    CHECK("files", file_is("srv.sock", 1, 0640, why, sizeof why), "%s", why);
    CHECK("files", file_is("c1.sock", 1, -1, why, sizeof why), "%s", why);
    CHECK("files", file_is("log.sock", 1, -1, why, sizeof why), "%s", why);
    CHECK("files", file_is("self.sock", 1, -1, why, sizeof why), "%s", why);

    int r1 = reap(c1), r2 = reap(c2);
    if (pa >= 0) close(pa);
    if (sabotage("fdset")) open("/dev/null", O_RDONLY);
    fdset_low(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "P's open fds were '%s', now '%s'", before, after);
    char f1[4096] = "", f2[4096] = "";
    read_file("c1-fail", f1, sizeof f1);
    read_file("c2-fail", f2, sizeof f2);
    if (f1[0]) fail("child", "C1 failed: %s", f1);
    if (f2[0]) fail("child", "C2 failed: %s", f2);
    if (sabotage("child")) r1 = 9;
    CHECK("child", r1 == 0 && r2 == 0, "the clients exited with %d and %d", r1, r2);
    return finish();
}
