/*
 * net_server: a line server on loopback (SO_REUSEADDR, like real servers)
 * that answers "ping X" with "pong X", serving clients from its poll loop
 * the whole time (also while it waits for "go"). Meant for `crest dump
 * --tcp-close`: clients from outside the job are connected at the
 * checkpoint, and after the restore each of those connections must look
 * reset by the peer (recv gives ECONNRESET or end of stream, poll says so)
 * while the listener carries on accepting.
 *
 *   net_server W N      W/port gets the port; after "go", done once every
 *                       connection from before is seen closed and N new
 *                       clients were answered (each closes after its pong)
 *
 * Checks: reset (every connection from before "go" ends: ECONNRESET or end
 * of stream, and poll reported it), served (N new clients answered), port
 * (the listener's port as before).
 */
#define TARGET_NAME "net_server"
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

static const char *const KEYS[] = {"reset", "served", "port", NULL};

#define MAXC 64
static int g_lis = -1;
static int g_port;
static struct conn {
    int fd;
    int old;           /* connected before "go" */
    char buf[256];
    size_t len;
} g_conns[MAXC];
static int g_nconns;
static int g_served, g_old_ended, g_old_resets, g_old_total;
static int g_go;

static void drop(int i)
{
    close(g_conns[i].fd);
    g_conns[i] = g_conns[--g_nconns];
}

/* Answers complete lines; 1 when the client closed. */
static int serve(struct conn *c, short revents)
{
    ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (c->old && r <= 0) {
        /* A connection from before the checkpoint ended: after a restore it must look reset by its peer. */
        if (r < 0 && errno == ECONNRESET) g_old_resets++;
        if (revents & (POLLHUP | POLLERR | POLLIN)) g_old_ended++;
        return 1;
    }
    if (r <= 0) {
        if (!c->old) g_served++;
        return 1;
    }
    c->len += (size_t)r;
    c->buf[c->len] = '\0';
    char *nl;
    while ((nl = strchr(c->buf, '\n'))) {
        *nl = '\0';
        char out[300];
        int n = snprintf(out, sizeof out, "pong %s\n", strncmp(c->buf, "ping ", 5) == 0 ? c->buf + 5 : "?");
        if (send(c->fd, out, (size_t)n, MSG_NOSIGNAL) != n) return 1;
        size_t used = (size_t)(nl + 1 - c->buf);
        memmove(c->buf, nl + 1, c->len - used + 1);
        c->len -= used;
    }
    return 0;
}

/* One round of the poll loop: accept, serve, forget closed clients. */
static void loop_once(int timeout_ms)
{
    struct pollfd pf[MAXC + 1];
    pf[0] = (struct pollfd){g_lis, POLLIN, 0};
    for (int i = 0; i < g_nconns; i++) pf[i + 1] = (struct pollfd){g_conns[i].fd, POLLIN, 0};
    int n = poll(pf, (nfds_t)g_nconns + 1, timeout_ms);
    if (n <= 0) return;
    for (int i = g_nconns - 1; i >= 0; i--) {
        if (pf[i + 1].revents && serve(&g_conns[i], pf[i + 1].revents)) drop(i);
    }
    if (pf[0].revents & POLLIN) {
        int fd = accept4(g_lis, NULL, NULL, SOCK_NONBLOCK);
        if (fd >= 0 && g_nconns < MAXC) {
            g_conns[g_nconns++] = (struct conn){.fd = fd, .old = !g_go};
            g_old_total += !g_go;
        }
        else if (fd >= 0) close(fd);
    }
}

static void tick(void)
{
    loop_once(0);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    int want = argc >= 3 ? atoi(argv[2]) : 3;
    g_lis = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (g_lis < 0) DIE_ERRNO("socket");
    int one = 1;
    if (setsockopt(g_lis, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) DIE_ERRNO("SO_REUSEADDR");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(g_lis, (struct sockaddr *)&a, alen) < 0) DIE_ERRNO("bind");
    if (listen(g_lis, 16) < 0) DIE_ERRNO("listen");
    if (getsockname(g_lis, (struct sockaddr *)&a, &alen) < 0) DIE_ERRNO("getsockname");
    g_port = ntohs(a.sin_port);
    write_filef("port", "%d\n", g_port);
    announce_ready();
    wait_go(tick);
    g_go = 1;

    if (getsockname(g_lis, (struct sockaddr *)&a, &alen) < 0) DIE_ERRNO("getsockname");
    int expect_port = sabotage("port") ? g_port + 1 : g_port;
    CHECK("port", ntohs(a.sin_port) == expect_port, "the listener is on port %d, not %d", ntohs(a.sin_port), expect_port);
    double end = mono_now() + 60;
    while ((g_old_ended < g_old_total || g_served < want) && mono_now() < end) loop_once(100);
    int old_want = g_old_total + (sabotage("reset") ? 1 : 0);
    CHECK("reset", g_old_total > 0 && g_old_ended == old_want, "%d of %d connections from before the checkpoint ended (%d with ECONNRESET)",
          g_old_ended, old_want, g_old_resets);
    int served_want = want + (sabotage("served") ? 1 : 0);
    CHECK("served", g_served == served_want, "answered %d new clients, expected %d", g_served, served_want);
    write_filef("resets", "%d\n", g_old_resets);
    return finish();
}
