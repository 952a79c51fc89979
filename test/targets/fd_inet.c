/*
 * fd_inet: TCP and UDP sockets that are bound, not connected, at fixed fds.
 *   10 TCP listener on 127.0.0.1 (a port the kernel chose), backlog 5, SO_REUSEADDR, TCP_NODELAY, O_NONBLOCK;
 *   11 TCP6 listener on ::1, IPV6_V6ONLY, SO_REUSEPORT, backlog 9, close-on-exec;
 *   12 UDP bound to 127.0.0.1 (a chosen port);
 *   13 a TCP socket bound to 127.0.0.1 but not listening;
 *   14 an unbound UDP socket;
 *   17 a UDP socket connected to 12 (bound by the kernel to a port it chose).
 * With the argument "established": 15 and 16 are the two ends of a TCP
 * connection through listener 10 (a checkpoint must refuse them).
 * After go: every socket has its address, port, options and flags; 10 and 11
 * accept connections; 12 receives a datagram; 14 is still unbound; 17 has its
 * port and peer, its datagrams reach 12, and 12's reach it.
 */
#define TARGET_NAME "fd_inet"
#include "fd_common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static const char *const KEYS[] = {"address", "options", "flags", "accept", "udp", "unbound", "connected", NULL};

static int opt(int fd, int level, int o)
{
    int v = -1;
    socklen_t l = sizeof v;
    getsockopt(fd, level, o, &v, &l);
    return v;
}

static int port_of(int fd)
{
    struct sockaddr_in6 a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    if (getsockname(fd, (struct sockaddr *)&a, &l) != 0) return -1;
    return ntohs(a.sin6_port); /* same offset in sockaddr_in */
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    int established = argc > 2 && strcmp(argv[2], "established") == 0;
    int one = 1;
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int t = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(t, (struct sockaddr *)&lo, sizeof lo) != 0 || listen(t, 5) != 0) DIE_ERRNO("tcp listener");
    put_at(t, 10, 0);
    struct sockaddr_in6 lo6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int t6 = socket(AF_INET6, SOCK_STREAM, 0);
    setsockopt(t6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    setsockopt(t6, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(t6, (struct sockaddr *)&lo6, sizeof lo6) != 0 || listen(t6, 9) != 0) DIE_ERRNO("tcp6 listener");
    put_at(t6, 11, 1);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(u, (struct sockaddr *)&lo, sizeof lo) != 0) DIE_ERRNO("udp bind");
    put_at(u, 12, 0);
    int b = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(b, (struct sockaddr *)&lo, sizeof lo) != 0) DIE_ERRNO("tcp bind");
    put_at(b, 13, 0);
    put_at(socket(AF_INET, SOCK_DGRAM, 0), 14, 0);
    int ports[5] = {port_of(10), port_of(11), port_of(12), port_of(13), port_of(14)};
    struct sockaddr_in to12 = lo;
    to12.sin_port = htons((uint16_t)ports[2]);
    int cu = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(cu, (struct sockaddr *)&to12, sizeof to12) != 0) DIE_ERRNO("udp connect");
    put_at(cu, 17, 0);
    const int port17 = port_of(17);
    if (established) {
        struct sockaddr_in to = lo;
        to.sin_port = htons((uint16_t)ports[0]);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&to, sizeof to) != 0) DIE_ERRNO("connect");
        put_at(c, 15, 0);
        int a;
        while ((a = accept(10, NULL, NULL)) < 0 && errno == EAGAIN) sleep_ms(1);
        put_at(a, 16, 0);
    }
    announce_ready();
    wait_go(NULL);

    if (sabotage("address")) { int s = socket(AF_INET, SOCK_STREAM, 0); bind(s, (struct sockaddr *)&lo, sizeof lo); listen(s, 5); dup2(s, 10); fcntl(10, F_SETFL, O_NONBLOCK); }
    if (sabotage("options")) { int z = 0; setsockopt(10, SOL_SOCKET, SO_REUSEADDR, &z, sizeof z); }
    if (sabotage("flags")) fcntl(10, F_SETFL, 0);
    if (sabotage("accept")) shutdown(11, SHUT_RD);
    if (sabotage("udp")) { int s = socket(AF_INET, SOCK_DGRAM, 0); dup2(s, 12); }
    if (sabotage("unbound")) bind(14, (struct sockaddr *)&lo, sizeof lo);
    if (sabotage("connected")) { int s = socket(AF_INET, SOCK_DGRAM, 0); bind(s, (struct sockaddr *)&lo, sizeof lo); dup2(s, 17); }

    int now[5] = {port_of(10), port_of(11), port_of(12), port_of(13), port_of(14)};
    CHECK("address", now[0] == ports[0] && now[1] == ports[1] && now[2] == ports[2] && now[3] == ports[3],
          "ports 10 %d (was %d) 11 %d (was %d) 12 %d (was %d) 13 %d (was %d)", now[0], ports[0], now[1], ports[1], now[2], ports[2], now[3],
          ports[3]);
    CHECK("unbound", now[4] == 0, "fd 14 is bound to port %d", now[4]);
    CHECK("options", opt(10, SOL_SOCKET, SO_REUSEADDR) == 1 && opt(10, IPPROTO_TCP, TCP_NODELAY) == 1 && opt(11, IPPROTO_IPV6, IPV6_V6ONLY) == 1 &&
                         opt(11, SOL_SOCKET, SO_REUSEPORT) == 1 && opt(10, SOL_SOCKET, SO_ACCEPTCONN) == 1 && opt(13, SOL_SOCKET, SO_ACCEPTCONN) == 0,
          "options: reuseaddr %d nodelay %d v6only %d reuseport %d listening %d/%d", opt(10, SOL_SOCKET, SO_REUSEADDR),
          opt(10, IPPROTO_TCP, TCP_NODELAY), opt(11, IPPROTO_IPV6, IPV6_V6ONLY), opt(11, SOL_SOCKET, SO_REUSEPORT),
          opt(10, SOL_SOCKET, SO_ACCEPTCONN), opt(13, SOL_SOCKET, SO_ACCEPTCONN));
    CHECK("flags", status_flags(10) == (O_RDWR | O_NONBLOCK) && status_flags(11) == O_RDWR && is_cloexec(11) == 1 && is_cloexec(10) == 0,
          "10: 0%o cloexec %d, 11: 0%o cloexec %d", status_flags(10), is_cloexec(10), status_flags(11), is_cloexec(11));
    struct sockaddr_in to = lo;
    to.sin_port = htons((uint16_t)ports[0]);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    int cr = connect(c, (struct sockaddr *)&to, sizeof to);
    int a = -1;
    for (int i = 0; i < 1000 && a < 0; i++) {
        a = accept(10, NULL, NULL);
        if (a < 0) sleep_ms(1);
    }
    struct sockaddr_in6 to6 = lo6;
    to6.sin6_port = htons((uint16_t)ports[1]);
    int c6 = socket(AF_INET6, SOCK_STREAM, 0);
    int cr6 = connect(c6, (struct sockaddr *)&to6, sizeof to6);
    int a6 = cr6 == 0 ? accept(11, NULL, NULL) : -1;
    CHECK("accept", cr == 0 && a >= 0 && cr6 == 0 && a6 >= 0, "tcp: connect %d accept %d; tcp6: connect %d accept %d", cr, a, cr6, a6);
    struct sockaddr_in tu = lo;
    tu.sin_port = htons((uint16_t)ports[2]);
    int us = socket(AF_INET, SOCK_DGRAM, 0);
    char m[8] = {0};
    ssize_t sr = sendto(us, "dgram", 5, 0, (struct sockaddr *)&tu, sizeof tu);
    struct pollfd pf = {12, POLLIN, 0};
    poll(&pf, 1, 2000);
    ssize_t rr = recv(12, m, sizeof m, MSG_DONTWAIT);
    CHECK("udp", sr == 5 && rr == 5 && memcmp(m, "dgram", 5) == 0, "udp 12: sent %zd, received %zd", sr, rr);
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    memset(&peer, 0, sizeof peer);
    int gp = getpeername(17, (struct sockaddr *)&peer, &pl);
    ssize_t s17 = send(17, "to12", 4, 0);
    char m12[8] = {0}, m17[8] = {0};
    pf.fd = 12;
    poll(&pf, 1, 2000);
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t r12 = recvfrom(12, m12, sizeof m12, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    ssize_t s12 = r12 == 4 ? sendto(12, "to17", 4, 0, (struct sockaddr *)&from, fl) : -1;
    pf.fd = 17;
    poll(&pf, 1, 2000);
    ssize_t r17 = recv(17, m17, sizeof m17, MSG_DONTWAIT);
    CHECK("connected",
          gp == 0 && peer.sin_port == to12.sin_port && peer.sin_addr.s_addr == to12.sin_addr.s_addr && port_of(17) == port17 && s17 == 4 &&
              r12 == 4 && memcmp(m12, "to12", 4) == 0 && ntohs(from.sin_port) == port17 && s12 == 4 && r17 == 4 && memcmp(m17, "to17", 4) == 0,
          "udp 17: getpeername %d (port %d, want %d), port %d (was %d), sent %zd, 12 got %zd from port %d, replied %zd, 17 got %zd", gp,
          ntohs(peer.sin_port), ports[2], port_of(17), port17, s17, r12, r12 == 4 ? ntohs(from.sin_port) : 0, s12, r17);
    if (established) CHECK("accept", send(15, "x", 1, 0) == 1 && recv(16, m, 1, 0) == 1, "the established connection broke");
    return finish();
}
