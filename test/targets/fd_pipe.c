/*
 * fd_pipe: pipes within the process, at fixed fds.
 *   10/11 pipe A (read end close-on-exec, write end O_NONBLOCK), capacity 256 KiB,
 *         200000 bytes of a pattern buffered; 16 a dup of 10;
 *   12/13 pipe B, empty (13 close-on-exec);
 *   14    read end of pipe C, its write end closed, "tail of C\n" left in it;
 *   15    write end of pipe D, its read end closed (SIGPIPE ignored);
 *   17/18 pipe E in packet mode (pipe2 O_DIRECT: the write end packetizes), empty.
 * After go: the same fds are open (nothing added by a checkpoint); A holds
 * exactly the pattern; capacities, flags, close-on-exec, dup sharing; each
 * pair still connected; C reads its tail then EOF; D's write fails with
 * EPIPE; E keeps packets apart.
 * With the argument "outside", 19/20 is one more pipe; once W/close19
 * exists (the test has opened the read end through /proc/PID/fd/19 from
 * outside the job), the target closes fd 19: its write end 20 then leads
 * outside the job, and a checkpoint must refuse it. Closed again after go.
 */
#define TARGET_NAME "fd_pipe"
#include "fd_common.h"
#include <signal.h>
#include <sys/ioctl.h>

static const char *const KEYS[] = {"fdset", "size", "data", "flags", "shared", "pair", "eof", "epipe", "packet", NULL};

#define ABYTES 200000
static uint64_t seed;
static unsigned char pat(size_t i)
{
    uint64_t z = seed ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    z ^= z >> 29;
    return (unsigned char)(z * 0xbf58476d1ce4e5b9ULL >> 56);
}

static void mkpipe(int flags, int r_at, int r_cloexec, int w_at, int w_cloexec)
{
    int p[2];
    if (pipe2(p, flags | O_CLOEXEC) != 0) DIE_ERRNO("pipe2");
    if (r_at >= 0) put_at(p[0], r_at, r_cloexec); else close(p[0]);
    if (w_at >= 0) put_at(p[1], w_at, w_cloexec); else close(p[1]);
}

static int outside;

/* Tick of the wait loop with "outside": closes fd 19 once the test holds that read end. */
static void close19(void)
{
    if (outside == 1 && access(wpath("close19"), F_OK) == 0) {
        close(19);
        outside = 2;
    }
}

static int nread(int fd)
{
    int n = -1;
    ioctl(fd, FIONREAD, &n);
    return n;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    seed = fresh_seed();
    signal(SIGPIPE, SIG_IGN);
    mkpipe(0, 10, 1, 11, 0);
    if (fcntl(11, F_SETFL, O_NONBLOCK) != 0) DIE_ERRNO("F_SETFL");
    if (fcntl(11, F_SETPIPE_SZ, 262144) < 262144) DIE_ERRNO("F_SETPIPE_SZ");
    unsigned char *buf = malloc(ABYTES);
    for (size_t i = 0; i < ABYTES; i++) buf[i] = pat(i);
    write_all(11, buf, ABYTES, "pipe A");
    if (dup2(10, 16) != 16) DIE_ERRNO("dup2");
    mkpipe(0, 12, 0, 13, 1);
    int c[2];
    if (pipe(c) != 0) DIE_ERRNO("pipe");
    write_all(c[1], "tail of C\n", 10, "pipe C");
    close(c[1]);
    put_at(c[0], 14, 0);
    mkpipe(0, -1, 0, 15, 0);
    mkpipe(O_DIRECT, 17, 0, 18, 0);
    outside = argc > 2 && strcmp(argv[2], "outside") == 0;
    if (outside) mkpipe(0, 19, 0, 20, 0);
    char before[1024];
    fdset(before, sizeof before);
    announce_ready();
    wait_go(outside ? close19 : NULL);
    if (outside) {
        close(20);
        fdset(before, sizeof before);
    }

    if (sabotage("fdset")) open("/dev/null", O_RDONLY);
    if (sabotage("size")) fcntl(12, F_SETPIPE_SZ, 131072);
    if (sabotage("data")) { char x; read(10, &x, 1); }
    if (sabotage("flags")) fcntl(11, F_SETFL, 0);
    if (sabotage("shared")) { int p[2]; pipe(p); dup2(p[0], 16); }
    if (sabotage("pair")) { int p[2]; pipe(p); dup2(p[1], 13); }
    if (sabotage("eof")) { int p[2]; pipe(p); write(p[1], "tail of C\n", 10); dup2(p[0], 14); }
    if (sabotage("epipe")) { int p[2]; pipe(p); dup2(p[1], 15); }
    if (sabotage("packet")) { int p[2]; pipe(p); dup2(p[0], 17); dup2(p[1], 18); }

    char after[1024];
    fdset(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "open fds were '%s', now '%s'", before, after);
    CHECK("size", fcntl(10, F_GETPIPE_SZ) == 262144 && fcntl(12, F_GETPIPE_SZ) == 65536, "capacities A %d (want 262144), B %d (want 65536)",
          fcntl(10, F_GETPIPE_SZ), fcntl(12, F_GETPIPE_SZ));
    CHECK("flags", status_flags(10) == O_RDONLY && status_flags(11) == (O_WRONLY | O_NONBLOCK) && status_flags(12) == O_RDONLY &&
                       status_flags(13) == O_WRONLY && status_flags(18) == (O_WRONLY | O_DIRECT),
          "status flags 10: 0%o 11: 0%o 12: 0%o 13: 0%o 18: 0%o", status_flags(10), status_flags(11), status_flags(12),
          status_flags(13), status_flags(18));
    CHECK("flags", is_cloexec(10) == 1 && is_cloexec(11) == 0 && is_cloexec(13) == 1 && is_cloexec(16) == 0, "close-on-exec 10 %d 11 %d 13 %d 16 %d",
          is_cloexec(10), is_cloexec(11), is_cloexec(13), is_cloexec(16));
    CHECK("shared", same_description(10, 16), "fd 16 no longer shares fd 10's description");
    int have = nread(10);
    size_t got = 0, bad = ABYTES;
    unsigned char *in = malloc(ABYTES);
    while (have == ABYTES && got < ABYTES) {
        ssize_t n = read(10, in + got, ABYTES - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    for (size_t i = 0; i < got; i++)
        if (in[i] != pat(i)) { bad = i; break; }
    if (got == ABYTES && bad == ABYTES) bad = 0;
    CHECK("data", have == ABYTES && got == ABYTES && bad == 0 && nread(10) == 0, "pipe A held %d bytes (want %d), read %zu, first difference at %zu",
          have, ABYTES, got, bad);
    char b[16] = {0};
    int ok1 = write(11, "ping", 4) == 4 && read(10, b, sizeof b) == 4 && memcmp(b, "ping", 4) == 0;
    int ok2 = write(13, "pong", 4) == 4 && read(12, b, sizeof b) == 4 && memcmp(b, "pong", 4) == 0;
    CHECK("pair", ok1 && ok2, "pipe A connected: %d, pipe B connected: %d", ok1, ok2);
    int hup = (poll_now(14, POLLIN) & POLLHUP) != 0;
    memset(b, 0, sizeof b);
    ssize_t t1 = hup ? read(14, b, sizeof b) : -1;
    ssize_t t2 = hup ? read(14, b + 10, sizeof b - 10) : -1;
    CHECK("eof", hup && t1 == 10 && memcmp(b, "tail of C\n", 10) == 0 && t2 == 0, "pipe C: hangup %d, read %zd then %zd", hup, t1, t2);
    errno = 0;
    ssize_t w = write(15, "x", 1);
    CHECK("epipe", w < 0 && errno == EPIPE, "write to pipe D without reader: %zd (%s)", w, strerror(errno));
    int okp = write(18, "ab", 2) == 2 && write(18, "cd", 2) == 2;
    memset(b, 0, sizeof b);
    ssize_t pk = read(17, b, sizeof b);
    CHECK("packet", okp && pk == 2 && memcmp(b, "ab", 2) == 0, "packet pipe E: read %zd bytes '%s' (want 2, 'ab')", pk, b);
    return finish();
}
