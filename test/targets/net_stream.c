/*
 * net_stream: two processes of one job connected over loopback TCP, each
 * streaming a checksummed byte stream to the other, with data in flight at
 * the checkpoint: neither reads before "go", and each writes until its send
 * queue is full, so the peer's receive queue holds unread bytes and its own
 * send queue bytes not yet sent. A crest job with its own network namespace
 * (`crest run --net`) is meant; the listener stays open beside the accepted
 * connection (same port).
 *
 *   net_stream W [4|6] [BYTES] [CHUNK] [CLAMP]
 *
 * Each write is CHUNK bytes at most (default 65536; small writes fill the
 * send buffer closer to its limit). CLAMP (bytes, default none) clamps each
 * side's receive window (TCP_WINDOW_CLAMP) until "go": the peer then faces
 * a window smaller than its MSS and sends only when its persist timer
 * fires, a window's worth at a time (the window is unclamped after "go"). After "go" each side writes the rest of
 * its stream (BYTES in all, default 8 MiB), reads the whole of the peer's
 * and checks every byte against the generator, then shuts its side down and
 * expects the peer's end of stream.
 * The child reports its verdict in W/child-verdict and its exit status.
 *
 * Checks: stream (every byte the peer sent, in order), total (bytes
 * received), addr (local and peer addresses as before), eof (end of
 * stream after the last byte), child (the other process's verdict).
 */
#define TARGET_NAME "net_stream"
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/sockios.h>

static const char *const KEYS[] = {"stream", "total", "addr", "eof", "child", NULL};

#define CONN_FD 20
#define LISTEN_FD 21

static int g_family = 4;
static uint64_t g_total = 8u << 20;
static size_t g_chunk = 65536;
static int g_clamp;

/* The byte stream of one side: xorshift64 bytes from a fixed seed. */
struct gen {
    uint64_t state;
    uint64_t word;
    unsigned left;
    uint64_t pos;
};

static void gen_init(struct gen *g, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    g->state = seed;
}

static uint8_t gen_next(struct gen *g)
{
    if (g->left == 0) {
        g->word = xorshift64(&g->state);
        g->left = 8;
    }
    uint8_t b = (uint8_t)g->word;
    g->word >>= 8;
    g->left--;
    g->pos++;
    return b;
}

static void fill(struct gen *g, uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) buf[i] = gen_next(g);
}

struct side {
    const char *role;
    int fd;
    struct gen out;  /* what we send */
    struct gen in;   /* what the peer sends (expected) */
    uint64_t sent, received;
    uint8_t pending[65536];
    size_t pend_off, pend_len;
    struct sockaddr_storage local, peer;
    socklen_t local_len, peer_len;
    uint64_t bad_at;
    int bad;
};

static uint64_t seed_of(const char *role)
{
    return role[0] == 's' ? 0x5e7e7e5e7e5eull : 0xc11e47c11e47ull;
}

/* Writes as much of our stream as the socket takes now; 1 when EAGAIN stopped it. */
static int pump_out(struct side *s)
{
    while (s->sent < g_total) {
        if (s->pend_off == s->pend_len) {
            size_t n = g_chunk;
            if (n > g_total - s->sent) n = (size_t)(g_total - s->sent);
            fill(&s->out, s->pending, n);
            s->pend_off = 0;
            s->pend_len = n;
        }
        ssize_t w = send(s->fd, s->pending + s->pend_off, s->pend_len - s->pend_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) return 1;
            if (errno == EINTR) continue;
            DIE_ERRNO("send");
        }
        s->pend_off += (size_t)w;
        s->sent += (uint64_t)w;
    }
    return 0;
}

/* Reads and checks what has arrived; 1 at the peer's end of stream. */
static int pump_in(struct side *s)
{
    uint8_t buf[65536];
    for (;;) {
        ssize_t r = recv(s->fd, buf, sizeof buf, 0);
        if (r < 0) {
            if (errno == EAGAIN) return 0;
            if (errno == EINTR) continue;
            DIE_ERRNO("recv");
        }
        if (r == 0) return 1;
        for (ssize_t i = 0; i < r; i++) {
            uint8_t want = gen_next(&s->in);
            if (buf[i] != want && !s->bad) {
                s->bad = 1;
                s->bad_at = s->received + (uint64_t)i;
            }
        }
        s->received += (uint64_t)r;
    }
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) DIE_ERRNO("fcntl O_NONBLOCK");
}

static void move_fd(int from, int to)
{
    if (from == to) return;
    if (dup2(from, to) < 0) DIE_ERRNO("dup2");
    close(from);
}

/* Before the checkpoint: fill the pipe both ways (no reading), remember the addresses. */
static void prime(struct side *s)
{
    gen_init(&s->out, seed_of(s->role));
    gen_init(&s->in, seed_of(s->role[0] == 's' ? "client" : "server"));
    set_nonblock(s->fd);
    int one = 1;
    if (setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) DIE_ERRNO("TCP_NODELAY");
    if (g_clamp && setsockopt(s->fd, IPPROTO_TCP, TCP_WINDOW_CLAMP, &g_clamp, sizeof g_clamp) < 0) DIE_ERRNO("TCP_WINDOW_CLAMP");
    s->local_len = sizeof s->local;
    s->peer_len = sizeof s->peer;
    if (getsockname(s->fd, (struct sockaddr *)&s->local, &s->local_len) < 0) DIE_ERRNO("getsockname");
    if (getpeername(s->fd, (struct sockaddr *)&s->peer, &s->peer_len) < 0) DIE_ERRNO("getpeername");
    /* Until the send queue is full and stays full (the peer's receive queue fills first). */
    int fulls = 0;
    while (fulls < 20) {
        if (pump_out(s)) fulls++;
        else die("%s: sent the whole stream before the queues filled; give more BYTES", s->role);
        sleep_ms(5);
    }
}

/* After go: finish both directions, then end of stream both ways. */
static void run_to_end(struct side *s)
{
    int wide = 64 << 20;
    if (g_clamp && setsockopt(s->fd, IPPROTO_TCP, TCP_WINDOW_CLAMP, &wide, sizeof wide) < 0) DIE_ERRNO("TCP_WINDOW_CLAMP");
    if (sabotage("stream")) s->in.state ^= 1;
    if (sabotage("addr")) ((struct sockaddr_in *)&s->peer)->sin_port ^= 1;
    struct sockaddr_storage l, p;
    socklen_t ll = sizeof l, pl = sizeof p;
    if (getsockname(s->fd, (struct sockaddr *)&l, &ll) < 0) DIE_ERRNO("getsockname");
    if (getpeername(s->fd, (struct sockaddr *)&p, &pl) < 0) DIE_ERRNO("getpeername");
    CHECK("addr", ll == s->local_len && memcmp(&l, &s->local, ll) == 0, "%s: local address changed", s->role);
    CHECK("addr", pl == s->peer_len && memcmp(&p, &s->peer, pl) == 0, "%s: peer address changed", s->role);

    int shut = 0, eof = 0;
    uint64_t extra = sabotage("eof") ? 1 : 0;
    double last = mono_now();
    uint64_t last_bytes = 0;
    while (!eof || !shut) {
        pump_out(s);
        if (s->sent == g_total && !shut) {
            if (shutdown(s->fd, SHUT_WR) < 0) DIE_ERRNO("shutdown");
            shut = 1;
        }
        if (!eof) eof = pump_in(s);
        if (s->sent + s->received != last_bytes) {
            last_bytes = s->sent + s->received;
            last = mono_now();
        } else if (mono_now() - last > 60) {
            fail("total", "%s: no progress for 60 s (sent %llu, received %llu of %llu)", s->role, (unsigned long long)s->sent,
                 (unsigned long long)s->received, (unsigned long long)g_total);
            return;
        }
        if (eof && shut) break;
        struct pollfd pf = {s->fd, (short)((eof ? 0 : POLLIN) | (s->sent < g_total ? POLLOUT : 0)), 0};
        poll(&pf, 1, 1000);
    }
    CHECK("stream", !s->bad, "%s: byte %llu of the peer's stream differs", s->role, (unsigned long long)s->bad_at);
    uint64_t want = g_total + (sabotage("total") ? 1 : 0);
    CHECK("total", s->received == want, "%s: received %llu bytes, not %llu", s->role, (unsigned long long)s->received,
          (unsigned long long)want);
    CHECK("eof", s->received + extra == g_total, "%s: end of stream after %llu bytes, expected %llu", s->role,
          (unsigned long long)s->received, (unsigned long long)(g_total + extra));
}

static void tick(void) {}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    if (argc >= 3) g_family = atoi(argv[2]);
    if (argc >= 4) g_total = strtoull(argv[3], NULL, 0);
    if (argc >= 5) g_chunk = strtoul(argv[4], NULL, 0);
    if (g_chunk == 0 || g_chunk > sizeof ((struct side *)0)->pending) die("CHUNK must be 1 to 65536");
    if (argc >= 6) g_clamp = atoi(argv[5]);
    if (g_family != 4 && g_family != 6) die("family must be 4 or 6");

    int lis = socket(g_family == 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);
    if (lis < 0) DIE_ERRNO("socket");
    int one = 1;
    if (setsockopt(lis, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) DIE_ERRNO("SO_REUSEADDR");
    struct sockaddr_storage a;
    socklen_t alen;
    memset(&a, 0, sizeof a);
    if (g_family == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a;
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        alen = sizeof *s4;
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_loopback;
        alen = sizeof *s6;
    }
    if (bind(lis, (struct sockaddr *)&a, alen) < 0) DIE_ERRNO("bind");
    if (listen(lis, 4) < 0) DIE_ERRNO("listen");
    if (getsockname(lis, (struct sockaddr *)&a, &alen) < 0) DIE_ERRNO("getsockname");
    unlink(wpath("child-ready"));
    unlink(wpath("child-verdict"));
    fflush(NULL);

    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) {
        close(lis);
        static struct side c = {.role = "client"};
        c.fd = socket(g_family == 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);
        if (c.fd < 0) DIE_ERRNO("socket");
        if (connect(c.fd, (struct sockaddr *)&a, alen) < 0) DIE_ERRNO("connect");
        move_fd(c.fd, CONN_FD);
        c.fd = CONN_FD;
        prime(&c);
        write_file("child-ready", "1", 1);
        wait_go(tick);
        run_to_end(&c);
        char v[8300];
        snprintf(v, sizeof v, "%s", g_failed ? g_fail_msg : "PASS");
        write_file("child-verdict", v, strlen(v));
        _exit(g_failed ? 1 : 0);
    }
    static struct side s = {.role = "server"};
    s.fd = accept(lis, NULL, NULL);
    if (s.fd < 0) DIE_ERRNO("accept");
    move_fd(lis, LISTEN_FD);
    move_fd(s.fd, CONN_FD);
    s.fd = CONN_FD;
    prime(&s);
    while (access(wpath("child-ready"), F_OK) != 0) sleep_ms(10);
    announce_ready();
    wait_go(tick);
    run_to_end(&s);

    int st;
    if (waitpid(child, &st, 0) < 0) DIE_ERRNO("waitpid");
    char v[8300];
    ssize_t n = read_file("child-verdict", v, sizeof v - 1);
    v[n > 0 ? n : 0] = '\0';
    int child_ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && strcmp(v, "PASS") == 0;
    if (sabotage("child")) child_ok = 0;
    CHECK("child", child_ok, "the client process ended with status 0x%x: %s", st, n > 0 ? v : "(no verdict)");
    return finish();
}
