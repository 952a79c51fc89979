/*
 * posix_timers: POSIX timers (timer_create) of every notify kind, with gaps
 * between their IDs.
 *   A  CLOCK_MONOTONIC, SIGUSR1 with value 0xC0FFEE, every 50 ms (a handler counts);
 *   -  a timer created and deleted again (a gap in the IDs);
 *   B  CLOCK_REALTIME with no sigevent (SIGALRM, value = its ID), 1000 s left;
 *   C  CLOCK_MONOTONIC, SIGEV_THREAD_ID to worker thread 2, SIGRTMIN+2 with
 *      value 0xBEEF, every 40 ms; worker 1 waits for the same signal and
 *      must never get one;
 *   -  another gap;
 *   D  CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 500 s of CPU time left, every 7 s;
 *   E  CLOCK_MONOTONIC one-shot SIGRTMIN+3 with value 0x77 that fired while
 *      the signal was blocked: at the checkpoint its signal is pending.
 * After go: every ID answers timer_gettime and the gaps do not; intervals and
 * times left; A and C tick on with the right values, C in worker 2 only;
 * E's signal is still pending, with its timer ID and value.
 */
#define TARGET_NAME "posix_timers"
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

static const char *const KEYS[] = {"ids", "periodic", "values", "thread", "left", "cpu", "pending", NULL};

static timer_t ta, tb, tc, td, te, gap1, gap2;
static volatile unsigned long a_ticks, a_bad, c_ticks[2], c_bad;
static volatile long expect_a = 0xC0FFEE;
static volatile pid_t tids[2];

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)uc;
    a_ticks = a_ticks + 1;
    if (si->si_code != SI_TIMER || si->si_value.sival_ptr != (void *)expect_a || si->si_timerid != (int)(intptr_t)ta) a_bad = a_bad + 1;
}

static void *worker(void *arg)
{
    int me = (int)(intptr_t)arg;
    tids[me] = (pid_t)syscall(SYS_gettid);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 2);
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&s, &si) < 0) continue;
        c_ticks[me] = c_ticks[me] + 1;
        if (si.si_code != SI_TIMER || si.si_value.sival_ptr != (void *)0xBEEF || si.si_timerid != (int)(intptr_t)tc) c_bad = c_bad + 1;
    }
    return NULL;
}

static timer_t make(clockid_t clock, struct sigevent *ev)
{
    timer_t t;
    if (timer_create(clock, ev, &t) != 0) DIE_ERRNO("timer_create");
    return t;
}

static void arm(timer_t t, long val_ms, long int_ms)
{
    struct itimerspec its = {{int_ms / 1000, (int_ms % 1000) * 1000000L}, {val_ms / 1000, (val_ms % 1000) * 1000000L}};
    if (timer_settime(t, 0, &its, NULL) != 0) DIE_ERRNO("timer_settime");
}

static double secs(struct timespec ts) { return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9; }

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN + 2);
    sigaddset(&rt, SIGRTMIN + 3);
    sigprocmask(SIG_BLOCK, &rt, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);

    pthread_t w[2];
    for (int i = 0; i < 2; i++) pthread_create(&w[i], NULL, worker, (void *)(intptr_t)i);
    while (tids[1] == 0) sleep_ms(1);

    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGUSR1;
    ev.sigev_value.sival_ptr = (void *)0xC0FFEE;
    ta = make(CLOCK_MONOTONIC, &ev);
    gap1 = make(CLOCK_MONOTONIC, NULL);
    tb = make(CLOCK_REALTIME, NULL);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev._sigev_un._tid = tids[1];
    ev.sigev_signo = SIGRTMIN + 2;
    ev.sigev_value.sival_ptr = (void *)0xBEEF;
    tc = make(CLOCK_MONOTONIC, &ev);
    gap2 = make(CLOCK_MONOTONIC, NULL);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_NONE;
    td = make(CLOCK_PROCESS_CPUTIME_ID, &ev);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 3;
    ev.sigev_value.sival_ptr = (void *)0x77;
    te = make(CLOCK_MONOTONIC, &ev);
    timer_delete(gap1);
    timer_delete(gap2);
    arm(ta, 50, 50);
    arm(tb, 1000 * 1000, 0);
    arm(tc, 40, 40);
    arm(td, 500 * 1000, 7000);
    arm(te, 1, 0);
    for (;;) {
        sigset_t p;
        sigpending(&p);
        if (sigismember(&p, SIGRTMIN + 3) && a_ticks >= 2 && c_ticks[1] >= 2) break;
        sleep_ms(5);
    }
    announce_ready();
    wait_go(NULL);

    if (sabotage("periodic")) arm(ta, 0, 0);
    if (sabotage("values")) expect_a = 0xDEAD;
    if (sabotage("thread")) arm(tc, 0, 0);
    if (sabotage("left")) arm(tb, 10 * 1000, 0);
    if (sabotage("cpu")) arm(td, 500 * 1000, 8000);
    if (sabotage("ids")) timer_delete(td); /* after "cpu", which arms it */
    if (sabotage("pending")) {
        struct timespec zero = {0, 0};
        sigtimedwait(&rt, NULL, &zero);
    }

    struct itimerspec s;
    timer_t live[] = {ta, tb, tc, td, te};
    for (int i = 0; i < 5; i++) CHECK("ids", timer_gettime(live[i], &s) == 0, "timer %d (ID %ld): %s", i, (long)(intptr_t)live[i], strerror(errno));
    CHECK("ids", timer_gettime(gap1, &s) != 0 && timer_gettime(gap2, &s) != 0, "a deleted timer ID answers again");

    memset(&s, 0, sizeof s);
    timer_gettime(ta, &s);
    CHECK("periodic", s.it_interval.tv_sec == 0 && s.it_interval.tv_nsec == 50000000 && secs(s.it_value) > 0,
          "A: interval %.3f s, left %.3f s", secs(s.it_interval), secs(s.it_value));
    memset(&s, 0, sizeof s);
    timer_gettime(tb, &s);
    CHECK("left", secs(s.it_interval) == 0 && secs(s.it_value) > 900 && secs(s.it_value) <= 1000, "B: interval %.3f s, left %.3f s",
          secs(s.it_interval), secs(s.it_value));
    memset(&s, 0, sizeof s);
    timer_gettime(td, &s);
    CHECK("cpu", s.it_interval.tv_sec == 7 && s.it_interval.tv_nsec == 0 && secs(s.it_value) > 490 && secs(s.it_value) <= 500,
          "D: interval %.3f s, left %.3f s", secs(s.it_interval), secs(s.it_value));

    siginfo_t si;
    memset(&si, 0, sizeof si);
    struct timespec zero = {0, 0};
    sigset_t only_e;
    sigemptyset(&only_e);
    sigaddset(&only_e, SIGRTMIN + 3);
    int got = sigtimedwait(&only_e, &si, &zero);
    CHECK("pending", got == SIGRTMIN + 3 && si.si_code == SI_TIMER && si.si_value.sival_ptr == (void *)0x77 && si.si_timerid == (int)(intptr_t)te,
          "E's signal: got %d, code %d, value %p, timer %d (ID %ld)", got, si.si_code, si.si_value.sival_ptr, si.si_timerid, (long)(intptr_t)te);

    unsigned long a0 = a_ticks, c0 = c_ticks[1];
    double start = mono_now();
    while (mono_now() - start < 0.4) sleep_ms(10);
    CHECK("periodic", a_ticks - a0 >= 3, "A: %lu ticks in 400 ms", a_ticks - a0);
    CHECK("values", a_bad == 0 && c_bad == 0, "%lu signals of A and %lu of C had the wrong code, value or timer ID", a_bad, c_bad);
    CHECK("thread", c_ticks[1] - c0 >= 3 && c_ticks[0] == 0, "C: %lu ticks in worker 2 in 400 ms, %lu ever in worker 1", c_ticks[1] - c0,
          c_ticks[0]);
    return finish();
}
