/*
 * threads_blocked: threads asleep in system calls (and one running) across
 * the checkpoint. Before ready, each of these is seen (in /proc) blocked in:
 *   CW  pthread_cond_wait, no timeout (futex);
 *   SL  nanosleep of everything left until a deadline 1.5 s after it started
 *       (CLOCK_MONOTONIC), looping until the deadline: the checkpoint makes
 *       one call end early (EINTR, with the time left in rem) or not at all;
 *   PL  poll on a pipe, no timeout (restarted: must not see EINTR);
 *   PT  poll on another pipe with a one-hour timeout (EINTR handled by
 *       polling again for what is left);
 *   RD  read on a third pipe (restarted: must not see EINTR);
 *   EP  epoll_wait on an eventfd, no timeout (epoll_wait says EINTR after
 *       any stop: polled again);
 *   SW  sigwaitinfo for SIGUSR2 (blocked everywhere; EINTR: waits again);
 *   ST  sem_timedwait with an absolute deadline an hour away (a futex wait
 *       with an absolute timeout: restarted by the kernel after a stop, so
 *       it must not see EINTR);
 *   BZ  a busy loop (integer and floating point), never in a system call.
 * A fourth pipe holds 1000 bytes written before ready.
 * After go the main thread wakes each (a condition signal, pipe writes, an
 * eventfd write, pthread_kill, a flag) and joins them with deadlines; each
 * checks what it got, its TID and a pattern on its stack; SL checks it never
 * stopped before its deadline; BZ replays its loop to the count it reached.
 * W/report: how many calls each needed ("NAME calls eintr" lines).
 */
#define TARGET_NAME "threads_blocked"
#include "threads_common.h"
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <semaphore.h>

static const char *const KEYS[] = {"tid", "stack", "cond", "sleep", "poll", "poll_eintr", "read", "epoll", "sigwait", "semwait", "busy", NULL};

#define SLEEP_S 1.5
#define NCANARY 64

static uint64_t g_seed;

enum { CW, SL, PL, PT, RD, EP, SW, ST, BZ, NT };
static const char *const NAMES[NT] = {"CW", "SL", "PL", "PT", "RD", "EP", "SW", "ST", "BZ"};

struct tinfo {
    pthread_t th;
    int id;
    volatile pid_t tid;
    int calls, eintr; /* system calls made for the blocking operation, and EINTRs among them */
    int result;       /* what the operation returned (its meaning is per thread) */
    int err;          /* errno of an unexpected failure, 0 if none */
    uint64_t got;     /* the value received */
};
static struct tinfo T[NT];

static int pipe_a[2], pipe_b[2], pipe_c[2], pipe_d[2];
static int efd, epfd;

/* Expected payloads (set before ready). */
static uint64_t val_a, val_c, val_d, val_e;

/* A pattern on the thread's own stack, checked after its operation. */
#define CANARY_SET(c, id)                                                                                          \
    for (int _i = 0; _i < NCANARY; _i++) (c)[_i] = mix64(g_seed ^ ((uint64_t)(id) << 32) ^ (uint64_t)_i)
static void check_canary(struct tinfo *t, volatile uint64_t *c)
{
    if (sabotage("stack") && t->id == RD) c[NCANARY / 2] ^= 1;
    int bad = -1;
    for (int i = 0; i < NCANARY && bad < 0; i++)
        if (c[i] != mix64(g_seed ^ ((uint64_t)t->id << 32) ^ (uint64_t)i)) bad = i;
    TCHECK("stack", bad < 0, "%s: stack pattern differs at word %d", NAMES[t->id], bad);
    if (sabotage("tid") && t->id == PL) t->tid ^= 1;
    TCHECK("tid", kernel_tid() == t->tid, "%s: gettid() is %d, was %d", NAMES[t->id], (int)kernel_tid(), (int)t->tid);
}

static void begin(struct tinfo *t)
{
    t->tid = kernel_tid();
    char name[16];
    snprintf(name, sizeof name, "crb-%s", NAMES[t->id]);
    pthread_setname_np(pthread_self(), name);
}

/* ---- CW */
static pthread_mutex_t cm = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ccv = PTHREAD_COND_INITIALIZER;
static int cflag;         /* under cm */
static uint64_t cvalue;   /* under cm */
static uint64_t cw_expect;

static void *cw_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    pthread_mutex_lock(&cm);
    while (!cflag) {
        t->calls++;
        pthread_cond_wait(&ccv, &cm);
    }
    t->got = cvalue;
    pthread_mutex_unlock(&cm);
    check_canary(t, c);
    return NULL;
}

/* ---- SL */
static double sl_deadline, sl_end;
static int sl_early, sl_bad_rem;

static void *sl_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    sl_deadline = mono_now() + SLEEP_S;
    for (;;) {
        double left = sl_deadline - mono_now();
        if (left <= 0) break;
        struct timespec req = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        struct timespec rem = {-1, -1};
        t->calls++;
        int r = nanosleep(&req, &rem);
        if (r == 0) {
            if (mono_now() < sl_deadline - 0.005) sl_early++; /* "done" before the time asked for */
        } else if (errno == EINTR) {
            t->eintr++;
            double rq = (double)req.tv_sec + (double)req.tv_nsec / 1e9, rm = (double)rem.tv_sec + (double)rem.tv_nsec / 1e9;
            if (rem.tv_sec < 0 || rem.tv_nsec < 0 || rem.tv_nsec >= 1000000000L || rm > rq) sl_bad_rem++;
        } else {
            t->err = errno;
            break;
        }
    }
    sl_end = mono_now();
    check_canary(t, c);
    return NULL;
}

/* ---- PL: poll without timeout, then the pipe's data and the buffered pipe's */
static uint8_t pl_buffered_ok;

static void *pl_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    struct pollfd p = {.fd = pipe_a[0], .events = POLLIN};
    t->calls++;
    t->result = poll(&p, 1, -1);
    if (t->result < 0) t->err = errno;
    if (t->result == 1 && read(pipe_a[0], &t->got, 8) != 8) t->err = EIO;
    /* The buffered pipe: 1000 bytes written before ready, then EOF (main closed its end). */
    uint8_t buf[2048];
    size_t n = 0;
    for (;;) {
        ssize_t k = read(pipe_b[0], buf + n, sizeof buf - n);
        if (k <= 0) break;
        n += (size_t)k;
    }
    pl_buffered_ok = n == 1000;
    for (size_t i = 0; i < n && pl_buffered_ok; i++) pl_buffered_ok = buf[i] == (uint8_t)(mix64(g_seed + i) & 0xff);
    check_canary(t, c);
    return NULL;
}

/* ---- PT: poll with a long timeout, polled again (for what is left) after EINTR */
static int pt_timeouts;

static void *pt_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    double deadline = mono_now() + 3600;
    for (;;) {
        struct pollfd p = {.fd = pipe_c[0], .events = POLLIN};
        int ms = (int)((deadline - mono_now()) * 1000);
        t->calls++;
        int r = poll(&p, 1, ms > 0 ? ms : 0);
        if (r < 0 && errno == EINTR) {
            t->eintr++;
            continue;
        }
        if (r == 0) {
            pt_timeouts++;
            if (mono_now() < deadline) continue;
        }
        t->result = r;
        if (r < 0) t->err = errno;
        break;
    }
    if (t->result == 1 && read(pipe_c[0], &t->got, 8) != 8) t->err = EIO;
    check_canary(t, c);
    return NULL;
}

/* ---- RD: a plain blocking read */
static void *rd_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    t->calls++;
    ssize_t r = read(pipe_d[0], &t->got, 8);
    t->result = (int)r;
    if (r < 0) t->err = errno;
    check_canary(t, c);
    return NULL;
}

/* ---- EP: epoll_wait without timeout, again after EINTR */
static void *ep_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    struct epoll_event ev[4];
    for (;;) {
        t->calls++;
        int r = epoll_wait(epfd, ev, 4, -1);
        if (r < 0 && errno == EINTR) {
            t->eintr++;
            continue;
        }
        t->result = r;
        if (r < 0) t->err = errno;
        break;
    }
    if (t->result == 1 && (ev[0].data.u64 != 0xe7e7 || read(efd, &t->got, 8) != 8)) t->err = EIO;
    check_canary(t, c);
    return NULL;
}

/* ---- SW: sigwaitinfo for SIGUSR2, again after EINTR */
static siginfo_t sw_info;

static void *sw_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    for (;;) {
        t->calls++;
        int r = sigwaitinfo(&set, &sw_info);
        if (r < 0 && errno == EINTR) {
            t->eintr++;
            continue;
        }
        t->result = r;
        if (r < 0) t->err = errno;
        break;
    }
    /* sigwaitinfo changes the blocked set while it waits: it must be back. */
    sigset_t now;
    pthread_sigmask(SIG_BLOCK, NULL, &now);
    if (!sigismember(&now, SIGUSR2)) t->err = EINVAL;
    check_canary(t, c);
    return NULL;
}

/* ---- ST: sem_timedwait, an hour */
static sem_t sem;

static void *st_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 3600;
    t->calls++;
    t->result = sem_timedwait(&sem, &dl);
    if (t->result != 0) t->err = errno;
    check_canary(t, c);
    return NULL;
}

/* ---- BZ: a busy loop */
static volatile int bz_stop;
static volatile uint64_t bz_progress;
static uint64_t bz_n, bz_x, bz_x_replay;
static double bz_d, bz_d_replay;

static inline __attribute__((always_inline)) void bz_step(uint64_t *x, double *d)
{
    uint64_t v = *x;
    v ^= v >> 12;
    v ^= v << 25;
    v ^= v >> 27;
    *x = v;
    *d = *d * 1.0000001 + (double)(v & 0xff) * 1e-9;
}

static void *bz_main(void *arg)
{
    struct tinfo *t = arg;
    volatile uint64_t c[NCANARY];
    CANARY_SET(c, t->id);
    begin(t);
    uint64_t x = g_seed | 1, n = 0;
    double d = 1.0;
    while (!bz_stop) {
        bz_step(&x, &d);
        n++;
        if ((n & 1023) == 0) bz_progress = n;
    }
    if (sabotage("busy")) x ^= 2;
    bz_n = n;
    bz_x = x;
    bz_d = d;
    uint64_t rx = g_seed | 1;
    double rd = 1.0;
    for (uint64_t i = 0; i < n; i++) bz_step(&rx, &rd);
    bz_x_replay = rx;
    bz_d_replay = rd;
    check_canary(t, c);
    return NULL;
}

static void *(*const MAINS[NT])(void *) = {cw_main, sl_main, pl_main, pt_main, rd_main, ep_main, sw_main, st_main, bz_main};

static void write8(int fd, uint64_t v)
{
    if (write(fd, &v, 8) != 8) DIE_ERRNO("write");
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_seed = fresh_seed();
    val_a = mix64(g_seed + 1);
    val_c = mix64(g_seed + 2);
    val_d = mix64(g_seed + 3);
    val_e = (mix64(g_seed + 4) >> 2) | 1; /* an eventfd counter: below 2^64-1, not 0 */
    cw_expect = mix64(g_seed + 5);

    if (pipe2(pipe_a, O_CLOEXEC) || pipe2(pipe_b, O_CLOEXEC) || pipe2(pipe_c, O_CLOEXEC) || pipe2(pipe_d, O_CLOEXEC)) DIE_ERRNO("pipe2");
    uint8_t buf[1000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(mix64(g_seed + i) & 0xff);
    write_all(pipe_b[1], buf, sizeof buf, "pipe b");
    efd = eventfd(0, EFD_CLOEXEC);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (efd < 0 || epfd < 0) DIE_ERRNO("eventfd/epoll");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xe7e7};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev) != 0) DIE_ERRNO("epoll_ctl");

    if (sem_init(&sem, 0, 0) != 0) DIE_ERRNO("sem_init");
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);

    for (int i = 0; i < NT; i++) {
        T[i].id = i;
        int e = pthread_create(&T[i].th, NULL, MAINS[i], &T[i]);
        if (e != 0) die("pthread_create: %s", strerror(e));
    }
    for (int i = 0; i < NT; i++)
        while (!T[i].tid) sleep_ms(1);
    const long FUTEX[] = {SYS_futex, -1}, SLEEP[] = {SYS_clock_nanosleep, SYS_nanosleep, -1}, POLL[] = {SYS_poll, SYS_ppoll, -1},
               READ[] = {SYS_read, -1}, EPOLL[] = {SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_pwait2, -1},
               SIGWAIT[] = {SYS_rt_sigtimedwait, -1};
    wait_blocked_in(T[CW].tid, FUTEX, "CW");
    wait_blocked_in(T[SL].tid, SLEEP, "SL");
    wait_blocked_in(T[PL].tid, POLL, "PL");
    wait_blocked_in(T[PT].tid, POLL, "PT");
    wait_blocked_in(T[RD].tid, READ, "RD");
    wait_blocked_in(T[EP].tid, EPOLL, "EP");
    wait_blocked_in(T[SW].tid, SIGWAIT, "SW");
    wait_blocked_in(T[ST].tid, FUTEX, "ST");
    while (bz_progress < 100000) sleep_ms(1);
    announce_ready();
    wait_go(NULL);

    /* Wake everyone (the sabotaged ones get the wrong thing, or nothing). */
    pthread_mutex_lock(&cm);
    cflag = 1;
    cvalue = cw_expect;
    if (!sabotage("cond")) pthread_cond_signal(&ccv);
    pthread_mutex_unlock(&cm);
    close(pipe_b[1]);
    write8(pipe_a[1], sabotage("poll") ? val_a ^ 1 : val_a);
    write8(pipe_c[1], sabotage("poll_eintr") ? val_c ^ 1 : val_c);
    write8(pipe_d[1], sabotage("read") ? val_d ^ 1 : val_d);
    write8(efd, sabotage("epoll") ? val_e ^ 2 : val_e);
    if (!sabotage("sigwait")) pthread_kill(T[SW].th, SIGUSR2);
    if (!sabotage("semwait")) sem_post(&sem);
    bz_stop = 1;

    int joined[NT];
    for (int i = 0; i < NT; i++) {
        int e = join_within(T[i].th, i == SL ? SLEEP_S + 5 : 3, NULL);
        joined[i] = e == 0;
        const char *key = i == CW ? "cond" : i == SL ? "sleep" : i == PL ? "poll" : i == PT ? "poll_eintr" : i == RD ? "read" : i == EP ? "epoll" : i == SW ? "sigwait" : i == ST ? "semwait" : "busy";
        TCHECK(key, e == 0, "%s (tid %d) did not finish: %s (stuck in system call %ld)", NAMES[i], (int)T[i].tid, strerror(e),
               thread_syscall(T[i].tid));
    }
    if (joined[CW])
        TCHECK("cond", T[CW].got == cw_expect && T[CW].calls >= 1, "CW woke with %#llx after %d waits", (unsigned long long)T[CW].got,
               T[CW].calls);
    if (joined[SL]) {
        if (sabotage("sleep")) sl_end = sl_deadline - 1;
        TCHECK("sleep", T[SL].err == 0 && sl_end >= sl_deadline && sl_early == 0 && sl_bad_rem == 0,
               "SL: error %d, ended %.3f s before its deadline, %d early completions, %d bad rem (%d calls, %d EINTR)", T[SL].err,
               sl_deadline - sl_end, sl_early, sl_bad_rem, T[SL].calls, T[SL].eintr);
    }
    if (joined[PL])
        TCHECK("poll", T[PL].result == 1 && T[PL].err == 0 && T[PL].got == val_a && pl_buffered_ok,
               "PL: poll returned %d (%s), got %#llx (expected %#llx), buffered pipe intact: %d", T[PL].result, strerror(T[PL].err),
               (unsigned long long)T[PL].got, (unsigned long long)val_a, pl_buffered_ok);
    if (joined[PT])
        TCHECK("poll_eintr", T[PT].result == 1 && T[PT].err == 0 && T[PT].got == val_c && pt_timeouts == 0,
               "PT: poll returned %d (%s) after %d calls (%d EINTR, %d early timeouts), got %#llx (expected %#llx)", T[PT].result,
               strerror(T[PT].err), T[PT].calls, T[PT].eintr, pt_timeouts, (unsigned long long)T[PT].got, (unsigned long long)val_c);
    if (joined[RD])
        TCHECK("read", T[RD].result == 8 && T[RD].got == val_d, "RD: read returned %d (%s), got %#llx (expected %#llx)", T[RD].result,
               strerror(T[RD].err), (unsigned long long)T[RD].got, (unsigned long long)val_d);
    if (joined[EP])
        TCHECK("epoll", T[EP].result == 1 && T[EP].err == 0 && T[EP].got == val_e,
               "EP: epoll_wait returned %d (%s) after %d calls, eventfd read %#llx (expected %#llx)", T[EP].result, strerror(T[EP].err),
               T[EP].calls, (unsigned long long)T[EP].got, (unsigned long long)val_e);
    if (joined[SW])
        TCHECK("sigwait",
               T[SW].result == SIGUSR2 && T[SW].err == 0 && sw_info.si_signo == SIGUSR2 && sw_info.si_pid == getpid(),
               "SW: sigwaitinfo returned %d (%s), signal %d from pid %d", T[SW].result, strerror(T[SW].err), sw_info.si_signo,
               (int)sw_info.si_pid);
    if (joined[ST])
        TCHECK("semwait", T[ST].result == 0 && T[ST].err == 0, "ST: sem_timedwait returned %d (%s)", T[ST].result, strerror(T[ST].err));
    if (joined[BZ])
        TCHECK("busy", bz_x == bz_x_replay && bz_d == bz_d_replay && bz_n >= 100000,
               "BZ: after %llu rounds state %#llx/%a, replayed %#llx/%a", (unsigned long long)bz_n, (unsigned long long)bz_x, bz_d,
               (unsigned long long)bz_x_replay, bz_d_replay);
    char report[512];
    size_t o = 0;
    for (int i = 0; i < NT; i++) o += (size_t)snprintf(report + o, sizeof report - o, "%s %d %d\n", NAMES[i], T[i].calls, T[i].eintr);
    write_file("report", report, o);
    return finish();
}
