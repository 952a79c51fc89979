/*
 * sockfd: a process holding a socket crest refuses at fd 9: an AF_UNIX
 * datagram socket bound to an abstract address, with SO_PASSCRED set
 * (credentials travel with its datagrams); after go it sends itself a
 * datagram and receives it. W/sockfd holds the fd number.
 */
#define TARGET_NAME "sockfd"
#include "common.h"
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>

static const char *const KEYS[] = {"socket", NULL};

#define SOCK_FD 9

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) DIE_ERRNO("socket");
    if (dup3(s, SOCK_FD, O_CLOEXEC) != SOCK_FD) DIE_ERRNO("dup3");
    close(s);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "crest-sockfd-%d-%llx", (int)getpid(),
                     (unsigned long long)fresh_seed());
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (bind(SOCK_FD, (struct sockaddr *)&addr, len) != 0) DIE_ERRNO("bind");
    int on = 1;
    if (setsockopt(SOCK_FD, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0) DIE_ERRNO("SO_PASSCRED");
    write_filef("sockfd", "%d\n", SOCK_FD);
    announce_ready();
    wait_go(NULL);
    if (sabotage("socket")) close(SOCK_FD);
    char buf[16] = {0};
    ssize_t sent = sendto(SOCK_FD, "ping", 4, 0, (struct sockaddr *)&addr, len);
    ssize_t got = sent == 4 ? recv(SOCK_FD, buf, sizeof buf, MSG_DONTWAIT) : -1;
    CHECK("socket", sent == 4 && got == 4 && memcmp(buf, "ping", 4) == 0,
          "datagram to itself on fd %d: sent %zd, received %zd", SOCK_FD, sent, got);
    return finish();
}
