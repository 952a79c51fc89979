/*
 * itimer: ITIMER_REAL every 50 ms, a SIGALRM handler counting ticks.
 * After go: the interval is still 50 ms and the timer armed; the tick count
 * did not go back; over ~300 ms at least 3 more ticks arrive.
 *
 * itimer_pending (built with -DPENDING_MODE): the same, but SIGALRM is
 * blocked before ready and the timer has fired, so at the checkpoint a
 * SIGALRM is pending and the kernel holds the timer unarmed (it re-arms a
 * periodic ITIMER_REAL when the signal is dequeued): getitimer shows a zero
 * value with a 50 ms interval. After go: SIGALRM is pending; unblocking it
 * runs the handler and the timer ticks on.
 */
#ifndef TARGET_NAME
#define TARGET_NAME "itimer"
#endif
#include "common.h"
#include <signal.h>
#include <sys/time.h>

#ifdef PENDING_MODE
static const char *const KEYS[] = {"interval", "ticks", "counter", "pending", NULL};
#else
static const char *const KEYS[] = {"interval", "ticks", "counter", NULL};
#endif

static volatile unsigned long ticks;

static void on_alarm(int sig)
{
    (void)sig;
    ticks = ticks + 1;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 50000}, {0, 50000}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0) DIE_ERRNO("setitimer");

    while (ticks < 2) sleep_ms(5);
#ifdef PENDING_MODE
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    for (;;) {
        sigset_t p;
        sigemptyset(&p);
        sigpending(&p);
        if (sigismember(&p, SIGALRM)) break;
        sleep_ms(5);
    }
#endif
    const unsigned long at_ready = ticks;
    write_filef("ticks", "%lu\n", at_ready);
    announce_ready();
    wait_go(NULL);

#ifdef PENDING_MODE
    if (sabotage("pending")) {
        struct timespec zero = {0, 0};
        sigtimedwait(&alrm, NULL, &zero);
    }
    {
        sigset_t p;
        sigemptyset(&p);
        sigpending(&p);
        CHECK("pending", sigismember(&p, SIGALRM), "SIGALRM is not pending");
        struct itimerval held;
        getitimer(ITIMER_REAL, &held);
        CHECK("interval", held.it_interval.tv_sec == 0 && held.it_interval.tv_usec == 50000,
              "interval (while SIGALRM is pending) is %ld.%06ld s, was 0.050000", (long)held.it_interval.tv_sec,
              (long)held.it_interval.tv_usec);
        unsigned long t = ticks;
        sigprocmask(SIG_UNBLOCK, &alrm, NULL);
        CHECK("pending", ticks == t + 1, "unblocking SIGALRM ran the handler %lu times, expected once", ticks - t);
    }
#endif

    if (sabotage("interval")) {
        struct itimerval slow = {{0, 100000}, {0, 100000}};
        setitimer(ITIMER_REAL, &slow, NULL);
    }
    if (sabotage("ticks")) {
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
    }
    if (sabotage("counter")) ticks = 0;

    unsigned long t_go = ticks;
    long long file_ticks = read_ll("ticks", -1);
    CHECK("counter", t_go >= at_ready && (long long)at_ready == file_ticks,
          "tick count %lu is below its value at ready %lu (W/ticks %lld)", t_go, at_ready, file_ticks);

    struct itimerval cur;
    getitimer(ITIMER_REAL, &cur);
    CHECK("interval", cur.it_interval.tv_sec == 0 && cur.it_interval.tv_usec == 50000,
          "interval is %ld.%06ld s, was 0.050000", (long)cur.it_interval.tv_sec, (long)cur.it_interval.tv_usec);
    CHECK("ticks", cur.it_value.tv_sec == 0 && cur.it_value.tv_usec > 0 && cur.it_value.tv_usec <= 100000,
          "timer value is %ld.%06ld s (disarmed or wrong)", (long)cur.it_value.tv_sec, (long)cur.it_value.tv_usec);

    unsigned long t0 = ticks;
    double start = mono_now();
    while (mono_now() - start < 0.3) sleep_ms(10);
    unsigned long t1 = ticks;
    CHECK("ticks", t1 - t0 >= 3, "%lu ticks in 300 ms, expected at least 3", t1 - t0);

    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    return finish();
}
