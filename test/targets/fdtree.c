/*
 * fdtree: a parent and its child sharing open files (test/cr/pipeline.test.ts).
 * Before the fork the parent opens, at fixed fds:
 *   10    W/log, O_RDWR without O_APPEND: one description, so one offset, for
 *         both; the child holds a POSIX write lock on its bytes 100-199
 *         through it (the process's, not the description's);
 *   11    W/alog, O_WRONLY|O_APPEND, with an flock (the description's);
 *   12/13 a stream socketpair, 14/15 a dgram one, 16/17 a seqpacket one: the
 *         parent keeps the even end, the child the odd one, and each sends the
 *         other data it leaves unread until go (stream: 60000 bytes each way;
 *         dgram, seqpacket: six messages of different lengths each way, one empty);
 *   18/19 a pipe: the child keeps the read end 18, the parent the write end
 *         19, 40000 bytes in it;
 *   20/21 a pipe both keep whole (shared descriptions), 1000 bytes in it;
 *   22    an eventfd (count 7), shared;
 *   23    an epoll instance, shared, watching fd 12 (the parent's end, with
 *         data from the child) for EPOLLIN with data 0x1234;
 *   24/25 a seqpacket socketpair the two take turns with (empty at the checkpoint);
 *   26    a memfd (4096 bytes) at offset 100, shared;
 *   27    the FIFO W/fifo opened O_RDWR, shared, "fifo-data" in it; the child
 *         opens it again O_WRONLY at 28 after the fork;
 *   29    W/gone, deleted while open, shared, the parent's POSIX write lock
 *         on its bytes 0-9 (the child sees it).
 * Each writes a line to both logs before ready: "P0 C0" in that order.
 * After go they take turns: the child sees the epoll report through the
 * shared instance, reads its queued data, both pipes and the eventfd, 10
 * bytes of the memfd, writes "X" into the FIFO and "C1" into the logs; the
 * parent reads its queued data, sees the eventfd and the shared pipe emptied
 * by the child, the memfd's offset moved by it, "fifo-dataX" in the FIFO,
 * writes "P1"; the child writes "C2" and pings
 * each socket; the parent reads the pings and checks the logs hold exactly
 * "P0 C0 C1 P1 C2" (one offset: nothing overwritten) and every offset is
 * at the end. Same descriptions in both (kcmp) for 10, 11, 20-23, 26, 27, 29; open fds
 * unchanged in both. The child reports its failures through W/child-fail
 * and its exit status.
 * Modes (argv[2]), for refusals: "outside-both": 30/31 one more pipe, read
 * end in the parent, write end in the child, which the test also opens
 * through /proc/PID/fd/31 from outside the job; "outside-reader": the same,
 * and once W/close31 exists the child closes 31 (the only write end left is
 * then outside the job); "epoll-elsewhere": 23 also watches an eventfd at
 * fd 32 that only the child keeps; "clone-files": only a child made with
 * clone(CLONE_FILES) (one fd table for both), which waits for go and exits.
 */
#define TARGET_NAME "fdtree"
#include "fd_common.h"
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

static const char *const KEYS[] = {"fdset", "same", "log", "append", "stream", "dgram", "seqpacket", "pipe", "sharedpipe", "eventfd", "epoll", "memfd", "fifo", "locks", "ping", "child", NULL};
static const int SHARED_FDS[] = {10, 11, 20, 21, 22, 23, 26, 27, 29};

#define STREAM_BYTES 60000
#define PIPE_BYTES 40000
#define SHARED_PIPE_BYTES 1000
static const size_t MSG_LENS[] = {1, 100, 0, 3000, 17, 250};
#define NMSG (sizeof MSG_LENS / sizeof MSG_LENS[0])

static uint64_t seed;
static const char *mode = "";

/* Byte i of the data stream `which` (each direction of each channel has its own). */
static unsigned char pat(int which, size_t i)
{
    uint64_t z = seed ^ ((uint64_t)which << 56) ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    z ^= z >> 29;
    return (unsigned char)(z * 0xbf58476d1ce4e5b9ULL >> 56);
}

static void fill(unsigned char *b, int which, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++) b[i] = pat(which, off + i);
}

/* First index where b differs from stream `which` at `off`, or n. */
static size_t differs(const unsigned char *b, int which, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(which, off + i)) return i;
    return n;
}

/* Sends the messages of stream `which` on `fd` (datagrams or seqpackets). */
static void send_msgs(int fd, int which)
{
    unsigned char b[4096];
    size_t off = 0;
    for (size_t m = 0; m < NMSG; m++) {
        fill(b, which, off, MSG_LENS[m]);
        if (send(fd, b, MSG_LENS[m], 0) != (ssize_t)MSG_LENS[m]) DIE_ERRNO("send");
        off += MSG_LENS[m];
    }
}

/* Reads the messages of stream `which` from `fd` (nonblocking): 1 when every one came, in order, with its length and bytes. */
static int recv_msgs(int fd, int which, char *why, size_t cap)
{
    unsigned char b[4096];
    size_t off = 0;
    for (size_t m = 0; m < NMSG; m++) {
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (n != (ssize_t)MSG_LENS[m]) {
            snprintf(why, cap, "message %zu: %zd bytes (%s), want %zu", m, n, n < 0 ? strerror(errno) : "ok", MSG_LENS[m]);
            return 0;
        }
        size_t at = differs(b, which, off, (size_t)n);
        if (at != (size_t)n) {
            snprintf(why, cap, "message %zu differs at byte %zu", m, at);
            return 0;
        }
        off += (size_t)n;
    }
    ssize_t more = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (more >= 0) {
        snprintf(why, cap, "one more message of %zd bytes", more);
        return 0;
    }
    return 1;
}

/* Reads exactly `n` bytes of stream `which` from fd (what is there: stream socket or pipe): 1 when all came and nothing more. */
static int recv_bytes(int fd, int which, size_t n, char *why, size_t cap)
{
    unsigned char *b = malloc(n + 1);
    size_t got = 0;
    int there = 0;
    while (got < n && ioctl(fd, FIONREAD, &there) == 0 && there > 0) {
        ssize_t k = read(fd, b + got, n - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    size_t at = differs(b, which, 0, got);
    int avail = -1;
    ioctl(fd, FIONREAD, &avail);
    free(b);
    if (got != n || at != got || avail != 0) {
        snprintf(why, cap, "read %zu of %zu bytes, first difference at %zu, %d more waiting", got, n, at, avail);
        return 0;
    }
    return 1;
}

static void tok(int fd)
{
    if (send(fd, "t", 1, 0) != 1) DIE_ERRNO("turn");
}

/* Waits for the other's turn token; 0 when it did not come (the other side failed badly). */
static int wait_tok(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    char c;
    if (poll(&p, 1, g_sabotage ? 5000 : 60000) != 1) return 0;
    return recv(fd, &c, 1, 0) == 1;
}

/* The log file's whole content (pread: the offset is not touched). */
static void log_content(int fd, char *out, size_t cap)
{
    ssize_t n = pread(fd, out, cap - 1, 0);
    out[n < 0 ? 0 : n] = 0;
}

/* Reaps `child`: its exit status, 100 + signal, or 200. */
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

static int mkpair(int type, int a_at, int b_at)
{
    int sv[2];
    if (socketpair(AF_UNIX, type, 0, sv) != 0) DIE_ERRNO("socketpair");
    put_at(sv[0], a_at, 0);
    put_at(sv[1], b_at, 0);
    return 0;
}

static void mkpipe(int r_at, int w_at)
{
    int p[2];
    if (pipe(p) != 0) DIE_ERRNO("pipe");
    put_at(p[0], r_at, 0);
    put_at(p[1], w_at, 0);
}

/* Children wait for W/go too (without appending to W/resumed). */
static void child_wait_go(void)
{
    while (access(g_go_path, F_OK) != 0) sleep_ms(10);
}

static int outside_mode(void)
{
    return strcmp(mode, "outside-both") == 0 || strcmp(mode, "outside-reader") == 0;
}

static int closed31;
/* The child's tick while waiting for go in mode outside-reader. */
static void child_tick(void)
{
    if (!closed31 && strcmp(mode, "outside-reader") == 0 && access(wpath("close31"), F_OK) == 0) {
        close(31);
        closed31 = 1;
    }
}

static int child_main(void)
{
    char why[256], before[1024], after[1024];
    close(12), close(14), close(16), close(19), close(24);
    if (outside_mode()) close(30);
    put_at(open(wpath("fifo"), O_WRONLY), 28, 0);
    unsigned char b[STREAM_BYTES];
    fill(b, 2, 0, STREAM_BYTES);
    write_all(13, b, STREAM_BYTES, "stream to parent");
    send_msgs(15, 4);
    send_msgs(17, 6);
    write_all(10, "C0\n", 3, "log");
    write_all(11, "c0\n", 3, "alog");
    struct flock lk = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 100};
    if (fcntl(10, F_SETLK, &lk) != 0) DIE_ERRNO("F_SETLK");
    tok(25);
    fdset(before, sizeof before);
    while (access(g_go_path, F_OK) != 0) {
        child_tick();
        sleep_ms(10);
    }
    if (closed31) fdset(before, sizeof before);
    if (!wait_tok(25)) {
        fail("child", "no turn from the parent after go");
        goto out;
    }
    struct epoll_event ev[4];
    int ne = epoll_wait(23, ev, 4, 0), seen = 0;
    for (int i = 0; i < ne; i++) seen |= ev[i].data.u64 == 0x1234 && (ev[i].events & EPOLLIN);
    CHECK("epoll", seen, "the shared epoll instance reports %d events, none 0x1234 EPOLLIN", ne);
    if (sabotage("stream")) { char x; read(13, &x, 1); }
    CHECK("stream", recv_bytes(13, 1, STREAM_BYTES, why, sizeof why), "child's end: %s", why);
    if (sabotage("dgram")) { char x; recv(15, &x, 1, MSG_DONTWAIT); }
    CHECK("dgram", recv_msgs(15, 3, why, sizeof why), "child's end: %s", why);
    if (sabotage("seqpacket")) { char x; recv(17, &x, 1, MSG_DONTWAIT); }
    CHECK("seqpacket", recv_msgs(17, 5, why, sizeof why), "child's end: %s", why);
    if (sabotage("pipe")) { char x; read(18, &x, 1); }
    CHECK("pipe", recv_bytes(18, 7, PIPE_BYTES, why, sizeof why), "pipe to the child: %s", why);
    if (sabotage("sharedpipe")) write(21, "x", 1);
    CHECK("sharedpipe", recv_bytes(20, 8, SHARED_PIPE_BYTES, why, sizeof why), "shared pipe: %s", why);
    uint64_t count = 0;
    if (sabotage("eventfd")) { uint64_t one = 1; write(22, &one, 8); }
    CHECK("eventfd", read(22, &count, 8) == 8 && count == 7, "the shared eventfd read %llu, want 7", (unsigned long long)count);
    struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    int gl = fcntl(29, F_GETLK, &q);
    CHECK("locks", gl == 0 && q.l_type == F_WRLCK && q.l_pid == getppid() && q.l_len == 10,
          "F_GETLK on the deleted file shows type %d pid %d, want the parent's (%d) write lock on bytes 0-9", q.l_type, (int)q.l_pid, (int)getppid());
    unsigned char m[10];
    ssize_t mn = read(26, m, sizeof m);
    CHECK("memfd", mn == 10 && differs(m, 9, 100, 10) == 10, "the shared memfd read %zd bytes at 100, want 10 of its contents", mn);
    write_all(28, "X", 1, "fifo");
    write_all(10, "C1\n", 3, "log");
    write_all(11, "c1\n", 3, "alog");
    tok(25);
    if (!wait_tok(25)) {
        fail("child", "no second turn from the parent");
        goto out;
    }
    write_all(10, "C2\n", 3, "log");
    write_all(11, "c2\n", 3, "alog");
    off_t end = lseek(10, 0, SEEK_CUR);
    CHECK("log", end == 15, "the child's offset in the log is %lld, want 15", (long long)end);
    int ok = send(13, "ping", 4, 0) == 4 && send(15, "ping", 4, 0) == 4 && send(17, "ping", 4, 0) == 4;
    CHECK("ping", ok, "the child's pings failed: %s", strerror(errno));
    if (sabotage("locks")) {
        struct flock un = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 100};
        fcntl(10, F_SETLK, &un);
    }
    fdset(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "the child's open fds were '%s', now '%s'", before, after);
    tok(25);
    /* Alive (its lock held) until the parent has looked. */
    if (!wait_tok(25)) fail("child", "no last turn from the parent");
    if (sabotage("child")) return 3;
out:
    if (g_failed) write_file("child-fail", g_fail_msg, g_fail_len);
    return g_failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    if (argc > 2) mode = argv[2];
    if (strcmp(mode, "clone-files") == 0) {
        pid_t c = (pid_t)syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
        if (c < 0) DIE_ERRNO("clone");
        if (c == 0) {
            child_wait_go();
            _exit(0);
        }
        announce_ready();
        wait_go(NULL);
        CHECK("child", reap(c) == 0, "the CLONE_FILES child failed");
        return finish();
    }
    seed = fresh_seed();
    signal(SIGPIPE, SIG_IGN);
    char why[256], before[1024], after[1024];
    put_at(open(wpath("log"), O_RDWR | O_CREAT | O_TRUNC, 0644), 10, 0);
    put_at(open(wpath("alog"), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644), 11, 0);
    if (flock(11, LOCK_EX | LOCK_NB) != 0) DIE_ERRNO("flock");
    mkpair(SOCK_STREAM, 12, 13);
    mkpair(SOCK_DGRAM, 14, 15);
    mkpair(SOCK_SEQPACKET, 16, 17);
    mkpipe(18, 19);
    mkpipe(20, 21);
    put_at(eventfd(7, 0), 22, 0);
    put_at(epoll_create1(0), 23, 0);
    struct epoll_event ee = {.events = EPOLLIN, .data.u64 = 0x1234};
    if (epoll_ctl(23, EPOLL_CTL_ADD, 12, &ee) != 0) DIE_ERRNO("epoll_ctl");
    mkpair(SOCK_SEQPACKET, 24, 25);
    put_at(memfd_create("fdtree", 0), 26, 0);
    if (outside_mode()) mkpipe(30, 31);
    if (mkfifo(wpath("fifo"), 0600) != 0) DIE_ERRNO("mkfifo");
    put_at(open(wpath("fifo"), O_RDWR), 27, 0);
    write_all(27, "fifo-data", 9, "fifo");
    put_at(open(wpath("gone"), O_RDWR | O_CREAT | O_TRUNC, 0644), 29, 0);
    write_all(29, "0123456789", 10, "gone");
    struct flock gk = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    if (fcntl(29, F_SETLK, &gk) != 0) DIE_ERRNO("F_SETLK gone");
    if (unlink(wpath("gone")) != 0) DIE_ERRNO("unlink gone");
    if (strcmp(mode, "epoll-elsewhere") == 0) {
        put_at(eventfd(0, 0), 32, 0);
        struct epoll_event e2 = {.events = EPOLLIN, .data.u64 = 0x32};
        if (epoll_ctl(23, EPOLL_CTL_ADD, 32, &e2) != 0) DIE_ERRNO("epoll_ctl 32");
    }
    unsigned char b[STREAM_BYTES];
    fill(b, 1, 0, STREAM_BYTES);
    write_all(12, b, STREAM_BYTES, "stream to child");
    send_msgs(14, 3);
    send_msgs(16, 5);
    fill(b, 7, 0, PIPE_BYTES);
    write_all(19, b, PIPE_BYTES, "pipe to child");
    fill(b, 9, 0, 4096);
    write_all(26, b, 4096, "memfd");
    if (lseek(26, 100, SEEK_SET) != 100) DIE_ERRNO("lseek memfd");
    fill(b, 8, 0, SHARED_PIPE_BYTES);
    write_all(21, b, SHARED_PIPE_BYTES, "shared pipe");
    write_all(10, "P0\n", 3, "log");
    write_all(11, "p0\n", 3, "alog");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) _exit(child_main());
    close(13), close(15), close(17), close(18), close(25);
    if (outside_mode()) close(31);
    if (strcmp(mode, "epoll-elsewhere") == 0) close(32);
    if (!wait_tok(24)) die("the child did not set up");
    fdset(before, sizeof before);
    announce_ready();
    wait_go(NULL);

    if (sabotage("same")) put_at(open(wpath("alog"), O_WRONLY | O_APPEND), 11, 0);
    for (size_t i = 0; i < sizeof SHARED_FDS / sizeof SHARED_FDS[0]; i++) {
        int fd = SHARED_FDS[i];
        CHECK("same", syscall(SYS_kcmp, getpid(), child, 0 /* KCMP_FILE */, fd, fd) == 0, "fd %d of the parent and the child are different descriptions", fd);
    }
    if (sabotage("epoll")) epoll_ctl(23, EPOLL_CTL_DEL, 12, NULL);
    if (sabotage("locks")) {
        struct flock un = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
        fcntl(29, F_SETLK, &un);
    }
    if (sabotage("append")) fcntl(11, F_SETFL, 0);
    CHECK("append", (status_flags(11) & O_APPEND) != 0 && (status_flags(10) & O_APPEND) == 0, "status flags of the logs: 0%o, 0%o", status_flags(10), status_flags(11));
    tok(24);
    if (!wait_tok(24)) {
        fail("child", "no turn from the child");
    } else {
        if (sabotage("stream")) { char x; read(12, &x, 1); }
        CHECK("stream", recv_bytes(12, 2, STREAM_BYTES, why, sizeof why), "parent's end: %s", why);
        CHECK("dgram", recv_msgs(14, 4, why, sizeof why), "parent's end: %s", why);
        CHECK("seqpacket", recv_msgs(16, 6, why, sizeof why), "parent's end: %s", why);
        int left = -1;
        ioctl(20, FIONREAD, &left);
        CHECK("sharedpipe", left == 0, "the shared pipe still holds %d bytes after the child read it", left);
        CHECK("eventfd", (poll_now(22, POLLIN) & POLLIN) == 0, "the shared eventfd still counts after the child read it");
        if (sabotage("memfd")) lseek(26, 0, SEEK_SET);
        off_t moff = lseek(26, 0, SEEK_CUR);
        CHECK("memfd", moff == 110, "the shared memfd's offset is %lld after the child read 10 bytes at 100, want 110", (long long)moff);
        if (sabotage("fifo")) { char x; read(27, &x, 1); }
        char f[16] = {0};
        int fl = fcntl(27, F_GETFL);
        fcntl(27, F_SETFL, fl | O_NONBLOCK);
        ssize_t fn = read(27, f, sizeof f - 1);
        fcntl(27, F_SETFL, fl);
        CHECK("fifo", fn == 10 && memcmp(f, "fifo-dataX", 10) == 0, "the FIFO held %zd bytes '%s', want 'fifo-dataX'", fn, f);
        if (sabotage("log")) lseek(10, -3, SEEK_CUR);
        write_all(10, "P1\n", 3, "log");
        write_all(11, "p1\n", 3, "alog");
        tok(24);
        if (!wait_tok(24)) {
            fail("child", "no second turn from the child");
        } else {
            if (sabotage("ping")) {
                int sv[2];
                socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
                dup2(sv[0], 12);
                close(sv[0]);
                close(sv[1]);
            }
            char p[8] = {0};
            int ok = recv(12, p, 4, MSG_DONTWAIT) == 4 && recv(14, p, 4, MSG_DONTWAIT) == 4 && recv(16, p, 4, MSG_DONTWAIT) == 4 &&
                     memcmp(p, "ping", 4) == 0;
            CHECK("ping", ok, "the child's pings did not all arrive");
            char log[256], alog[256];
            log_content(10, log, sizeof log);
            int afd = open(wpath("alog"), O_RDONLY | O_CLOEXEC);
            log_content(afd, alog, sizeof alog);
            close(afd);
            off_t end = lseek(10, 0, SEEK_CUR);
            CHECK("log", strcmp(log, "P0\nC0\nC1\nP1\nC2\n") == 0 && end == 15, "the log holds '%s' and the parent's offset is %lld", oneline(log),
                  (long long)end);
            CHECK("append", strcmp(alog, "p0\nc0\nc1\np1\nc2\n") == 0, "the appended log holds '%s'", oneline(alog));
            // The child still holds its POSIX lock (the parent sees it), the shared description its flock.
            struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 120, .l_len = 10};
            int got = fcntl(10, F_GETLK, &q);
            CHECK("locks", got == 0 && q.l_type == F_WRLCK && q.l_pid == child && q.l_start == 100 && q.l_len == 100,
                  "F_GETLK on the log shows type %d pid %d range %lld+%lld, want the child's (%d) write lock on 100+100", q.l_type, (int)q.l_pid,
                  (long long)q.l_start, (long long)q.l_len, (int)child);
            int other = open(wpath("alog"), O_RDONLY | O_CLOEXEC);
            int fl2 = flock(other, LOCK_SH | LOCK_NB);
            CHECK("locks", fl2 != 0 && errno == EWOULDBLOCK, "the appended log's flock is gone (a new description could lock it)");
            close(other);
            tok(24);
        }
    }
    if (sabotage("fdset")) open("/dev/null", O_RDONLY);
    fdset(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "the parent's open fds were '%s', now '%s'", before, after);
    int st = reap(child);
    char msg[4096];
    if (read_file("child-fail", msg, sizeof msg) < 0) msg[0] = 0;
    CHECK("child", st == 0, "the child exited with %d: %s", st, msg);
    return finish();
}
