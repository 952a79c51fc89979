/*
 * fd_timerfd: timerfds at fixed fds.
 *   10 CLOCK_MONOTONIC, relative, next expiry in 30 s, interval 7 s, O_NONBLOCK, close-on-exec;
 *   11 CLOCK_REALTIME, TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET at now + 1000 s;
 *   12 CLOCK_MONOTONIC one-shot that expired before the checkpoint (1 expiration unread), O_NONBLOCK;
 *   13 CLOCK_BOOTTIME, fired once (unread) and armed again with its 20 s interval.
 * After go: 10 has at most 30 s left and its 7 s interval, nothing to read;
 * 11 keeps its settime flags and at most 1000 s; 12 reads 1 and is then
 * disarmed and empty; 13 reads 1 and has at most 20 s left, interval 20 s.
 */
#define TARGET_NAME "fd_timerfd"
#include "fd_common.h"
#include <sys/timerfd.h>

static const char *const KEYS[] = {"value", "interval", "abstime", "ticks", "flags", NULL};

static double ts(struct timespec t) { return (double)t.tv_sec + (double)t.tv_nsec / 1e9; }

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    put_at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), 10, 1);
    struct itimerspec a = {{7, 0}, {30, 0}};
    if (timerfd_settime(10, 0, &a, NULL) != 0) DIE_ERRNO("settime 10");
    put_at(timerfd_create(CLOCK_REALTIME, 0), 11, 0);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct itimerspec b = {{0, 0}, {now.tv_sec + 1000, now.tv_nsec}};
    if (timerfd_settime(11, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &b, NULL) != 0) DIE_ERRNO("settime 11");
    put_at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 12, 0);
    struct itimerspec c = {{0, 0}, {0, 1000000}};
    if (timerfd_settime(12, 0, &c, NULL) != 0) DIE_ERRNO("settime 12");
    put_at(timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK), 13, 0);
    struct itimerspec d = {{20, 0}, {0, 1000000}};
    if (timerfd_settime(13, 0, &d, NULL) != 0) DIE_ERRNO("settime 13");
    sleep_ms(50);
    if (strcmp(fdinfo_field(12, "ticks"), "1") != 0 || strcmp(fdinfo_field(13, "ticks"), "1") != 0) die("timers 12/13 did not fire");
    announce_ready();
    wait_go(NULL);

    if (sabotage("value")) { struct itimerspec z = {{7, 0}, {0, 0}}; timerfd_settime(10, 0, &z, NULL); }
    if (sabotage("interval")) { struct itimerspec z = {{8, 0}, {29, 0}}; timerfd_settime(10, 0, &z, NULL); }
    if (sabotage("abstime")) { struct itimerspec z = {{0, 0}, {900, 0}}; timerfd_settime(11, 0, &z, NULL); }
    if (sabotage("ticks")) { uint64_t x; read(12, &x, 8); }
    if (sabotage("flags")) fcntl(10, F_SETFL, 0);

    CHECK("flags", status_flags(10) == (O_RDWR | O_NONBLOCK) && is_cloexec(10) == 1 && status_flags(11) == O_RDWR && is_cloexec(11) == 0,
          "10: flags 0%o cloexec %d; 11: flags 0%o cloexec %d", status_flags(10), is_cloexec(10), status_flags(11), is_cloexec(11));
    struct itimerspec g;
    timerfd_gettime(10, &g);
    CHECK("value", ts(g.it_value) > 0 && ts(g.it_value) <= 30.0, "fd 10: %.3f s left (want 0 < left <= 30)", ts(g.it_value));
    CHECK("interval", g.it_interval.tv_sec == 7 && g.it_interval.tv_nsec == 0, "fd 10 interval %.3f s (want 7)", ts(g.it_interval));
    uint64_t x = 0;
    CHECK("ticks", read(10, &x, 8) < 0 && errno == EAGAIN, "fd 10 had expirations to read");
    timerfd_gettime(11, &g);
    CHECK("abstime", strcmp(fdinfo_field(11, "settime flags"), "03") == 0 && ts(g.it_value) > 0 && ts(g.it_value) <= 1000.0,
          "fd 11: settime flags '%s' (want 03), %.3f s left", fdinfo_field(11, "settime flags"), ts(g.it_value));
    x = 0;
    ssize_t n = read(12, &x, 8);
    CHECK("ticks", n == 8 && x == 1, "fd 12 read %zd bytes, %llu expirations (want 1)", n, (unsigned long long)x);
    timerfd_gettime(12, &g);
    CHECK("value", ts(g.it_value) == 0 && ts(g.it_interval) == 0, "fd 12 is armed again: %.3f s, interval %.3f", ts(g.it_value),
          ts(g.it_interval));
    x = 0;
    n = read(13, &x, 8);
    timerfd_gettime(13, &g);
    CHECK("ticks", n == 8 && x == 1, "fd 13 read %zd bytes, %llu expirations (want 1)", n, (unsigned long long)x);
    CHECK("interval", g.it_interval.tv_sec == 20 && ts(g.it_value) > 0 && ts(g.it_value) <= 20.0, "fd 13: %.3f s left, interval %.3f",
          ts(g.it_value), ts(g.it_interval));
    return finish();
}
