/*
 * fd_unix: unix sockets within the process, at fixed fds.
 *   10/11 a stream socketpair: 70000 bytes of a pattern queued for 10 (sent by 11),
 *         "hello from 10" queued for 11; 10 has SO_PEEK_OFF 5; 11 SO_SNDBUF set to 65536 (reads 131072);
 *   12/13 a dgram socketpair (12 O_NONBLOCK): messages of 5, 0 and 3000 bytes queued for 12, "x" for 13;
 *   14/15 a seqpacket socketpair: "one", "two-two" queued for 15;
 *   16    a stream listener bound to W/sock (mode 0640), backlog 7;
 *   17    a seqpacket listener on an abstract name, backlog 3.
 * After go: the same fds are open; each queue holds exactly its bytes, with
 * the message boundaries; the peek offset and buffer size; the pairs are
 * still connected to each other; the listeners accept connections by their
 * names, W/sock is the socket file with its mode, and 16 queues exactly
 * backlog + 1 connections.
 * With the argument "pending", a connection to 16 is left waiting to be
 * accepted at the checkpoint (its client at fd 18, nothing sent): after go
 * the target accepts it and closes both first.
 */
#define TARGET_NAME "fd_unix"
#include "fd_common.h"
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static const char *const KEYS[] = {"fdset", "stream", "dgram", "seqpacket", "peekoff", "sndbuf", "pair", "listen", "backlog", "abstract", NULL};

#define SBYTES 70000
static uint64_t seed;
static unsigned char pat(size_t i)
{
    uint64_t z = seed ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    z ^= z >> 31;
    return (unsigned char)(z * 0x94d049bb133111ebULL >> 56);
}

static void pair(int type, int a, int b)
{
    int sv[2];
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) DIE_ERRNO("socketpair");
    put_at(sv[0], a, 0);
    put_at(sv[1], b, 0);
}

static struct sockaddr_un abs_addr;
static socklen_t abs_len;

static int connect_to(const struct sockaddr_un *a, socklen_t len, int type)
{
    int c = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c < 0) return -1;
    if (connect(c, (const struct sockaddr *)a, len) != 0) {
        close(c);
        return -1;
    }
    return c;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    seed = fresh_seed();
    signal(SIGPIPE, SIG_IGN);
    pair(SOCK_STREAM, 10, 11);
    unsigned char *buf = malloc(SBYTES);
    for (size_t i = 0; i < SBYTES; i++) buf[i] = pat(i);
    write_all(11, buf, SBYTES, "stream 11->10");
    write_all(10, "hello from 10", 13, "stream 10->11");
    int off = 5, sb = 65536;
    if (setsockopt(10, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off) != 0) DIE_ERRNO("SO_PEEK_OFF");
    if (setsockopt(11, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb) != 0) DIE_ERRNO("SO_SNDBUF");
    pair(SOCK_DGRAM, 12, 13);
    fcntl(12, F_SETFL, O_NONBLOCK);
    unsigned char big[3000];
    for (int i = 0; i < 3000; i++) big[i] = pat((size_t)i + 7);
    if (send(13, "fives", 5, 0) != 5 || send(13, "", 0, 0) != 0 || send(13, big, 3000, 0) != 3000 || send(12, "x", 1, 0) != 1)
        DIE_ERRNO("dgram send");
    pair(SOCK_SEQPACKET, 14, 15);
    if (send(14, "one", 3, 0) != 3 || send(14, "two-two", 7, 0) != 7) DIE_ERRNO("seqpacket send");

    struct sockaddr_un pa = {.sun_family = AF_UNIX};
    snprintf(pa.sun_path, sizeof pa.sun_path, "%s", wpath("sock"));
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    mode_t um = umask(0);
    if (bind(l, (struct sockaddr *)&pa, sizeof pa) != 0) DIE_ERRNO("bind W/sock");
    umask(um);
    if (chmod(wpath("sock"), 0640) != 0) DIE_ERRNO("chmod");
    if (listen(l, 7) != 0) DIE_ERRNO("listen");
    put_at(l, 16, 1);
    abs_addr.sun_family = AF_UNIX;
    int n = snprintf(abs_addr.sun_path + 1, sizeof abs_addr.sun_path - 1, "crest-fd_unix-%d-%llx", (int)getpid(), (unsigned long long)seed);
    abs_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    int la = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (bind(la, (struct sockaddr *)&abs_addr, abs_len) != 0) DIE_ERRNO("bind abstract");
    if (listen(la, 3) != 0) DIE_ERRNO("listen");
    put_at(la, 17, 0);
    int pending = argc > 2 && strcmp(argv[2], "pending") == 0;
    if (pending) put_at(connect_to(&pa, sizeof pa, SOCK_STREAM), 18, 0);
    struct stat sst0;
    lstat(wpath("sock"), &sst0);
    char before[1024];
    fdset(before, sizeof before);
    announce_ready();
    wait_go(NULL);

    if (pending) {
        int a = accept(16, NULL, NULL);
        if (a < 0) die("the pending connection was not there");
        close(a);
        close(18);
        fdset(before, sizeof before);
    }
    if (sabotage("fdset")) open("/dev/null", O_RDONLY);
    if (sabotage("stream")) { char x; recv(10, &x, 1, MSG_DONTWAIT); }
    if (sabotage("dgram")) { char x[8]; recv(12, x, sizeof x, MSG_DONTWAIT); }
    if (sabotage("seqpacket")) send(14, "more", 4, 0);
    if (sabotage("peekoff")) { int z = 0; setsockopt(10, SOL_SOCKET, SO_PEEK_OFF, &z, sizeof z); }
    if (sabotage("sndbuf")) { int z = 32768; setsockopt(11, SOL_SOCKET, SO_SNDBUF, &z, sizeof z); }
    if (sabotage("pair")) { int sv[2]; socketpair(AF_UNIX, SOCK_STREAM, 0, sv); dup2(sv[0], 11); }
    if (sabotage("listen")) unlink(wpath("sock"));
    if (sabotage("backlog")) listen(16, 2);
    if (sabotage("abstract")) { int s = socket(AF_UNIX, SOCK_SEQPACKET, 0); listen(s, 1); dup2(s, 17); }

    char after[1024];
    fdset(after, sizeof after);
    CHECK("fdset", strcmp(before, after) == 0, "open fds were '%s', now '%s'", before, after);
    int po = -2;
    socklen_t pol = sizeof po;
    getsockopt(10, SOL_SOCKET, SO_PEEK_OFF, &po, &pol);
    unsigned char peek[4] = {0};
    ssize_t pk = recv(10, peek, 4, MSG_PEEK | MSG_DONTWAIT);
    CHECK("peekoff", po == 5 && pk == 4 && memcmp(peek, buf + 5, 4) == 0,
          "SO_PEEK_OFF %d (want 5), peek read %zd bytes %s", po, pk, pk == 4 && memcmp(peek, buf + 5, 4) == 0 ? "from offset 5" : "not from offset 5");
    int zero = -1;
    setsockopt(10, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero);
    int sbv = 0;
    socklen_t sbl = sizeof sbv;
    getsockopt(11, SOL_SOCKET, SO_SNDBUF, &sbv, &sbl);
    CHECK("sndbuf", sbv == 131072, "SO_SNDBUF of 11 is %d (want 131072)", sbv);
    unsigned char *in = malloc(SBYTES + 16);
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(10, in + got, SBYTES + 16 - got, MSG_DONTWAIT);
        if (r <= 0) break;
        got += (size_t)r;
    }
    CHECK("stream", got == SBYTES && memcmp(in, buf, SBYTES) == 0, "stream 10 held %zu bytes (want %d)%s", got, SBYTES,
          got == SBYTES && memcmp(in, buf, SBYTES) != 0 ? ", different" : "");
    char h[32] = {0};
    ssize_t hr = recv(11, h, sizeof h, MSG_DONTWAIT);
    CHECK("stream", hr == 13 && memcmp(h, "hello from 10", 13) == 0, "stream 11 held %zd bytes '%s'", hr, h);
    unsigned char d[4000];
    ssize_t d1 = recv(12, d, sizeof d, 0);
    int ok1 = d1 == 5 && memcmp(d, "fives", 5) == 0;
    ssize_t d2 = recv(12, d, sizeof d, 0);
    ssize_t d3 = recv(12, d, sizeof d, 0);
    int ok3 = d3 == 3000 && memcmp(d, big, 3000) == 0;
    ssize_t d4 = recv(12, d, sizeof d, 0);
    ssize_t d5 = recv(13, d, sizeof d, MSG_DONTWAIT);
    CHECK("dgram", ok1 && d2 == 0 && ok3 && d4 < 0 && errno == EAGAIN && d5 == 1 && d[0] == 'x',
          "dgram 12 messages %zd(%s) %zd %zd(%s) then %zd; 13: %zd", d1, ok1 ? "ok" : "bad", d2, d3, ok3 ? "ok" : "bad", d4, d5);
    char s1[16] = {0}, s2[16] = {0};
    ssize_t q1 = recv(15, s1, sizeof s1, MSG_DONTWAIT);
    ssize_t q2 = recv(15, s2, sizeof s2, MSG_DONTWAIT);
    ssize_t q3 = recv(15, s2 + 8, 4, MSG_DONTWAIT);
    CHECK("seqpacket", q1 == 3 && !strcmp(s1, "one") && q2 == 7 && !strcmp(s2, "two-two") && q3 < 0, "seqpacket 15: %zd '%s', %zd '%s', then %zd",
          q1, s1, q2, s2, q3);
    int okp = send(11, "ping", 4, 0) == 4 && recv(10, h, sizeof h, MSG_DONTWAIT) == 4 && send(13, "dg", 2, 0) == 2 &&
              recv(12, h, sizeof h, 0) == 2 && send(15, "sp", 2, 0) == 2 && recv(14, h, sizeof h, MSG_DONTWAIT) == 2;
    CHECK("pair", okp, "the socketpairs are not connected to each other any more");
    struct stat sst;
    int isst = lstat(wpath("sock"), &sst) == 0;
    CHECK("listen", isst && S_ISSOCK(sst.st_mode) && (sst.st_mode & 07777) == 0640, "W/sock: %s, mode %o", isst ? "exists" : "missing",
          isst ? (unsigned)(sst.st_mode & 07777) : 0u);
    int queued = 0, c;
    int conns[32];
    while (queued < 32 && (c = connect_to(&pa, sizeof pa, SOCK_STREAM)) >= 0) conns[queued++] = c;
    int acc = poll_now(16, POLLIN) & POLLIN ? accept(16, NULL, NULL) : -1;
    CHECK("listen", acc >= 0, "accept on 16: %s", strerror(errno));
    CHECK("backlog", queued == 8, "%d connections queued on 16 (want backlog 7 + 1)", queued);
    for (int i = 0; i < queued; i++) close(conns[i]);
    int ca = connect_to(&abs_addr, abs_len, SOCK_SEQPACKET);
    int aa = ca >= 0 && (poll_now(17, POLLIN) & POLLIN) ? accept(17, NULL, NULL) : -1;
    CHECK("abstract", ca >= 0 && aa >= 0, "connect/accept on the abstract listener: %d/%d", ca, aa);
    return finish();
}
