/*
 * fd_epoll: an epoll instance at fd 10 (close-on-exec) with registrations:
 *   11 an eventfd holding 1, EPOLLIN, data 0x1111222233334444;
 *   12 an eventfd holding 1, EPOLLIN|EPOLLONESHOT, already reported once (disarmed);
 *   14 an eventfd holding 1 registered through fd 15 (a dup of it), which was closed since:
 *      the registration lives on under fd number 15, EPOLLIN|EPOLLET, data 0x15, its edge not reported yet;
 *   16 a second epoll instance (watching 11), EPOLLIN, data 0x16;
 *   13 an eventfd holding 0, EPOLLOUT|EPOLLIN, data 0x13 (writable, not readable).
 * After go: epoll_wait reports exactly 11 (IN), 15 (IN), 16 (IN), 13 (OUT) by
 * their data and not the disarmed one-shot; fdinfo lists the registrations
 * under the same fd numbers and events; re-arming the one-shot reports it.
 */
#define TARGET_NAME "fd_epoll"
#include "fd_common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

static const char *const KEYS[] = {"ready", "oneshot", "closed", "fdinfo", "flags", NULL};

static void add(int ep, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event e = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0) DIE_ERRNO("epoll_ctl");
}

static int cmp_str(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* The registrations in fdinfo as "tfd:events:data" triples, sorted (the kernel lists them by file address). */
static void regs(int ep, char *out, size_t cap)
{
    char buf[8192], items[16][64];
    int n = 0;
    fdinfo(ep, buf, sizeof buf);
    for (char *l = buf; *l && n < 16;) {
        char *nl = strchr(l, '\n');
        int tfd;
        unsigned ev;
        unsigned long long data;
        if (sscanf(l, "tfd: %d events: %x data: %llx", &tfd, &ev, &data) == 3)
            snprintf(items[n++], sizeof items[0], "%d:%x:%llx", tfd, ev, data);
        if (!nl) break;
        l = nl + 1;
    }
    qsort(items, (size_t)n, sizeof items[0], cmp_str);
    out[0] = 0;
    size_t used = 0;
    for (int i = 0; i < n; i++) used += (size_t)snprintf(out + used, cap - used, "%s ", items[i]);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    put_at(epoll_create1(EPOLL_CLOEXEC), 10, 1);
    put_at(eventfd(1, EFD_NONBLOCK), 11, 0);
    put_at(eventfd(1, EFD_NONBLOCK), 12, 0);
    put_at(eventfd(0, EFD_NONBLOCK), 13, 0);
    put_at(eventfd(1, EFD_NONBLOCK), 14, 0);
    if (dup2(14, 15) != 15) DIE_ERRNO("dup2");
    put_at(epoll_create1(0), 16, 0);
    add(16, 11, EPOLLIN, 0xaa);
    add(10, 11, EPOLLIN, 0x1111222233334444ULL);
    add(10, 12, EPOLLIN | EPOLLONESHOT, 0x12);
    add(10, 13, EPOLLIN | EPOLLOUT, 0x13);
    add(10, 16, EPOLLIN, 0x16);
    /* Fire the one-shot. */
    struct epoll_event evs[8];
    int n = epoll_wait(10, evs, 8, 0);
    int fired = 0;
    for (int i = 0; i < n; i++) fired |= evs[i].data.u64 == 0x12;
    if (!fired) die("the one-shot registration did not fire");
    /* Edge-triggered, its edge not reported yet; then the fd it was made through goes. */
    add(10, 15, EPOLLIN | EPOLLET, 0x15);
    close(15);
    char before[512];
    regs(10, before, sizeof before);
    announce_ready();
    wait_go(NULL);

    if (sabotage("ready")) epoll_ctl(10, EPOLL_CTL_DEL, 11, NULL);
    if (sabotage("oneshot")) { struct epoll_event e = {.events = EPOLLIN, .data.u64 = 0x12}; epoll_ctl(10, EPOLL_CTL_MOD, 12, &e); }
    if (sabotage("closed")) { uint64_t v; read(14, &v, 8); }
    if (sabotage("fdinfo")) add(10, 14, EPOLLIN, 0x14);
    if (sabotage("flags")) fcntl(10, F_SETFD, 0);

    CHECK("flags", is_cloexec(10) == 1 && is_cloexec(16) == 0, "close-on-exec 10: %d, 16: %d", is_cloexec(10), is_cloexec(16));
    char after[512];
    regs(10, after, sizeof after);
    CHECK("fdinfo", strcmp(before, after) == 0, "registrations (fd:events) were '%s', now '%s'", before, after);
    n = epoll_wait(10, evs, 8, 0);
    int seen11 = 0, seen13 = 0, seen15 = 0, seen16 = 0, seen12 = 0, other = 0;
    for (int i = 0; i < n; i++) {
        uint64_t d = evs[i].data.u64;
        if (d == 0x1111222233334444ULL && evs[i].events == EPOLLIN) seen11++;
        else if (d == 0x13 && evs[i].events == EPOLLOUT) seen13++;
        else if (d == 0x15 && evs[i].events == EPOLLIN) seen15++;
        else if (d == 0x16 && evs[i].events == EPOLLIN) seen16++;
        else if (d == 0x12) seen12++;
        else other++;
    }
    CHECK("ready", seen11 == 1 && seen13 == 1 && seen16 == 1 && other == 0, "epoll_wait: %d events; 11:%d 13:%d 16:%d other:%d", n, seen11,
          seen13, seen16, other);
    CHECK("closed", seen15 == 1, "the registration under closed fd 15 reported %d times", seen15);
    CHECK("oneshot", seen12 == 0, "the disarmed one-shot reported %d times", seen12);
    struct epoll_event e = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0x12};
    int mod = epoll_ctl(10, EPOLL_CTL_MOD, 12, &e);
    n = epoll_wait(10, evs, 8, 0);
    int again = 0;
    for (int i = 0; i < n; i++) again += evs[i].data.u64 == 0x12;
    CHECK("oneshot", mod == 0 && again == 1, "re-armed one-shot: epoll_ctl %d, reported %d times", mod, again);
    return finish();
}
