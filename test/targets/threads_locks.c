/*
 * threads_locks: locks, thread ids and per-thread state across the checkpoint.
 *
 * Before ready:
 *   - 8 workers take turns (turn % 8 == their index) under a mutex and a
 *     condition variable, each folding a deterministic sequence into shared
 *     state (shared_acc, order-dependent) and its own __thread accumulator;
 *     each has a distinct __thread value, its own signal mask (base mask +
 *     SIGRTMIN+2+i, with two values queued to it by pthread_sigqueue), its own
 *     sigaltstack and a name (pthread_setname_np); SIGUSR1 has an SA_ONSTACK
 *     handler; SIGRTMIN+12 is blocked everywhere and queued to the process;
 *   - H holds an error-checking mutex, a priority-inheritance mutex and a
 *     robust mutex; B is blocked on the first, PB on the second (futex wait:
 *     the owner's TID is in the mutex words);
 *   - R holds a rwlock for reading; W is blocked taking it for writing.
 * After go:
 *   - every thread still has its kernel TID (gettid) and glibc's cached one
 *     (mutex ownership, pthread_kill, the rwlock writer check rely on it);
 *   - the turns go on and the arithmetic is exactly the deterministic one;
 *   - masks, queued signals, alternate stacks, names are each thread's own;
 *   - pthread_kill reaches exactly the thread asked for, on its alt stack;
 *   - the held mutexes are still owned by H: the main thread cannot unlock
 *     them (EPERM), H's relock says EDEADLK, H unlocks them and B and PB get
 *     them; H exits holding the robust mutex and the kernel marks it
 *     EOWNERDEAD (H's robust list came back); every thread is joined
 *     (clear_child_tid came back);
 *   - the main thread cannot take the rwlock for writing while R reads; R
 *     lets go, W gets it and its relock says EDEADLK (cached TID).
 * W/tids lists the TIDs ("name tid" lines) for the test.
 */
#define TARGET_NAME "threads_locks"
#include "threads_common.h"

static const char *const KEYS[] = {"tid",   "tls",  "acc",   "turns",   "sigmask", "pending", "shared_pending",
                                   "altstack", "name", "kill", "join",  "owner",   "blocked", "pi",
                                   "robust", "rwlock", NULL};

#define NW 8
#define ALTSZ (64 * 1024)
#define FUTEX_TID_MASK 0x3fffffff
#define FUTEX_WAITERS 0x80000000u

static uint64_t g_seed;

/* ------------------------------------------------------------ the workers */

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint64_t turn;       /* under m */
static uint64_t shared_acc; /* under m */
static int stop;            /* under m */

struct worker {
    pthread_t th;
    int idx;
    pid_t tid;
    uint64_t tls_expect;
    char name[16];
    char *alt;
    int own_sig;
    uint64_t mask_expect;
    uint64_t rounds; /* its turns (under m) */
    uint64_t acc;    /* its __thread accumulator, copied after stop */
    volatile int started, checked;
};

static struct worker workers[NW];
static volatile int release_workers;

static __thread uint64_t tls_val;
static __thread uint64_t tls_acc;
static __thread int tls_slot = -1;

static volatile int usr1_hits;
static volatile int usr1_last_slot = -1;
static volatile pid_t usr1_last_tid;
static volatile int usr1_on_alt;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    char here;
    int s = tls_slot;
    usr1_last_slot = s;
    usr1_last_tid = kernel_tid();
    usr1_on_alt = s >= 0 && (uintptr_t)&here >= (uintptr_t)workers[s].alt && (uintptr_t)&here < (uintptr_t)workers[s].alt + ALTSZ;
    __atomic_add_fetch(&usr1_hits, 1, __ATOMIC_SEQ_CST);
}

static uint64_t step_value(int idx, uint64_t round)
{
    return mix64(g_seed ^ ((uint64_t)idx << 56) ^ round);
}

static int dummy_tid_word;

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    tls_slot = w->idx;
    tls_val = w->tls_expect;
    tls_acc = 0;
    w->tid = kernel_tid();
    if (pthread_setname_np(pthread_self(), w->name) != 0) die("pthread_setname_np");
    stack_t ss = {.ss_sp = w->alt, .ss_size = ALTSZ, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) DIE_ERRNO("sigaltstack");
    sigset_t add;
    sigemptyset(&add);
    sigaddset(&add, w->own_sig);
    pthread_sigmask(SIG_BLOCK, &add, NULL);
    w->mask_expect = current_mask_bits();
    __atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);

    pthread_mutex_lock(&m);
    for (;;) {
        while (!stop && turn % NW != (uint64_t)w->idx) pthread_cond_wait(&cv, &m);
        if (stop) break;
        uint64_t x = step_value(w->idx, turn / NW);
        shared_acc = shared_acc * 6364136223846793005ULL + x;
        tls_acc = rotl64(tls_acc, 7) ^ x;
        w->rounds++;
        turn++;
        pthread_cond_broadcast(&cv);
        /* Some time outside the lock, asleep: the checkpoint finds workers in every state. */
        pthread_mutex_unlock(&m);
        struct timespec ts = {0, 50 * 1000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&m);
    }
    pthread_mutex_unlock(&m);

    /* Past go (stop is only set after it): the worker's own checks. */
    if (sabotage("tid") && w->idx == 1) w->tid ^= 1;
    TCHECK("tid", kernel_tid() == w->tid, "worker %d: gettid() is %d, was %d", w->idx, (int)kernel_tid(), (int)w->tid);
    if (sabotage("tls") && w->idx == 3) tls_val ^= 1;
    TCHECK("tls", tls_val == w->tls_expect && tls_slot == w->idx, "worker %d: __thread value %#llx slot %d, expected %#llx slot %d",
           w->idx, (unsigned long long)tls_val, tls_slot, (unsigned long long)w->tls_expect, w->idx);
    if (sabotage("acc") && w->idx == 2) tls_acc ^= 4;
    w->acc = tls_acc;

    if (sabotage("sigmask") && w->idx == 4) {
        sigset_t more;
        sigemptyset(&more);
        sigaddset(&more, SIGWINCH);
        pthread_sigmask(SIG_BLOCK, &more, NULL);
    }
    uint64_t mask = current_mask_bits() & ~GLIBC_INTERNAL_SIGS;
    TCHECK("sigmask", mask == (w->mask_expect & ~GLIBC_INTERNAL_SIGS), "worker %d: blocked %#llx, was %#llx", w->idx,
           (unsigned long long)mask, (unsigned long long)(w->mask_expect & ~GLIBC_INTERNAL_SIGS));

    /* Its own two queued signals, in order, with their values; nothing else of its own. */
    sigset_t own;
    sigemptyset(&own);
    sigaddset(&own, w->own_sig);
    struct timespec zero = {0, 0};
    siginfo_t si;
    if (sabotage("pending") && w->idx == 6) sigtimedwait(&own, &si, &zero);
    sigset_t pend;
    sigemptyset(&pend);
    sigpending(&pend);
    TCHECK("pending", sigismember(&pend, w->own_sig) == 1, "worker %d: signal %d not pending", w->idx, w->own_sig);
    for (int k = 1; k <= 2; k++) {
        memset(&si, 0, sizeof si);
        int got = sigtimedwait(&own, &si, &zero);
        int want = w->idx * 1000 + k;
        TCHECK("pending", got == w->own_sig && si.si_code == SI_QUEUE && si.si_value.sival_int == want && si.si_pid == getpid(),
               "worker %d: queued signal %d: got %d code %d value %d pid %d (expected %d value %d)", w->idx, k, got, si.si_code,
               si.si_value.sival_int, (int)si.si_pid, w->own_sig, want);
    }
    TCHECK("pending", sigtimedwait(&own, &si, &zero) < 0 && errno == EAGAIN, "worker %d: a third signal %d was pending", w->idx,
           w->own_sig);

    if (sabotage("altstack") && w->idx == 7) {
        stack_t other = {.ss_sp = w->alt, .ss_size = ALTSZ - 4096, .ss_flags = 0};
        sigaltstack(&other, NULL);
    }
    stack_t cur;
    memset(&cur, 0, sizeof cur);
    sigaltstack(NULL, &cur);
    TCHECK("altstack", cur.ss_sp == w->alt && cur.ss_size == ALTSZ && cur.ss_flags == 0,
           "worker %d: alternate stack %p size %zu flags %d, expected %p size %d flags 0", w->idx, cur.ss_sp, cur.ss_size, cur.ss_flags,
           (void *)w->alt, ALTSZ);

    if (sabotage("name") && w->idx == 0) pthread_setname_np(pthread_self(), "renamed");
    char name[32] = "";
    pthread_getname_np(pthread_self(), name, sizeof name);
    TCHECK("name", strcmp(name, w->name) == 0, "worker %d: name '%s', expected '%s'", w->idx, name, w->name);

    __atomic_store_n(&w->checked, 1, __ATOMIC_RELEASE);
    /* The main thread's pthread_kill round comes now; signals are taken while we wait. */
    while (!__atomic_load_n(&release_workers, __ATOMIC_ACQUIRE)) sleep_ms(1);
    if (sabotage("join") && w->idx == 5) syscall(SYS_set_tid_address, &dummy_tid_word);
    return NULL;
}

/* ------------------------------------------------------------ H, B, PB */

static pthread_mutex_t hold_m, pi_m, rob_m;
static volatile pid_t tid_H, tid_B, tid_PB, tid_R, tid_W;
static volatile int h_held, h_go, hold_released, pi_released;
static int h_relock, h_pi_relock, h_unlock, h_pi_unlock;
static int b_lock = -1, b_saw_released, pb_lock = -1, pb_saw_released;

static struct robust_list_head_local {
    void *next;
    long futex_offset;
    void *pending;
} empty_robust = {&empty_robust, 0, NULL};

static int lock_within_ms(pthread_mutex_t *mu, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    return pthread_mutex_timedlock(mu, &ts);
}

static void *holder_main(void *arg)
{
    (void)arg;
    tid_H = kernel_tid();
    pthread_setname_np(pthread_self(), "crw-holder");
    if (pthread_mutex_lock(&hold_m) != 0 || pthread_mutex_lock(&pi_m) != 0 || pthread_mutex_lock(&rob_m) != 0) die("holder: lock failed");
    __atomic_store_n(&h_held, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&h_go, __ATOMIC_ACQUIRE)) sleep_ms(2);
    /* Still ours: a relock is a deadlock (glibc compares the owner with its cached TID). */
    h_relock = lock_within_ms(&hold_m, 100);
    if (h_relock == 0) pthread_mutex_unlock(&hold_m);
    h_pi_relock = lock_within_ms(&pi_m, 100);
    if (h_pi_relock == 0) pthread_mutex_unlock(&pi_m);
    __atomic_store_n(&hold_released, 1, __ATOMIC_RELEASE);
    h_unlock = pthread_mutex_unlock(&hold_m);
    __atomic_store_n(&pi_released, 1, __ATOMIC_RELEASE);
    h_pi_unlock = pthread_mutex_unlock(&pi_m);
    /* Exit holding rob_m: the kernel walks our robust list and marks it owner-dead. */
    if (sabotage("robust")) syscall(SYS_set_robust_list, &empty_robust, sizeof empty_robust);
    return NULL;
}

static void *blocker_main(void *arg)
{
    (void)arg;
    tid_B = kernel_tid();
    pthread_setname_np(pthread_self(), "crw-blocked");
    b_lock = pthread_mutex_lock(&hold_m);
    b_saw_released = __atomic_load_n(&hold_released, __ATOMIC_ACQUIRE);
    if (b_lock == 0) pthread_mutex_unlock(&hold_m);
    return NULL;
}

static void *pi_blocker_main(void *arg)
{
    (void)arg;
    tid_PB = kernel_tid();
    pthread_setname_np(pthread_self(), "crw-piblocked");
    pb_lock = pthread_mutex_lock(&pi_m);
    pb_saw_released = __atomic_load_n(&pi_released, __ATOMIC_ACQUIRE);
    if (pb_lock == 0) pthread_mutex_unlock(&pi_m);
    return NULL;
}

/* ------------------------------------------------------------ R, W */

static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
static volatile int r_held, r_go, r_released;
static int r_unlock = -1, w_lock = -1, w_saw_released, w_relock, w_cur_writer;

static void *reader_main(void *arg)
{
    (void)arg;
    tid_R = kernel_tid();
    pthread_setname_np(pthread_self(), "crw-reader");
    if (pthread_rwlock_rdlock(&rw) != 0) die("rdlock");
    __atomic_store_n(&r_held, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&r_go, __ATOMIC_ACQUIRE)) sleep_ms(2);
    __atomic_store_n(&r_released, 1, __ATOMIC_RELEASE);
    r_unlock = pthread_rwlock_unlock(&rw);
    return NULL;
}

static void *writer_main(void *arg)
{
    (void)arg;
    tid_W = kernel_tid();
    pthread_setname_np(pthread_self(), "crw-writer");
    w_lock = pthread_rwlock_wrlock(&rw);
    w_saw_released = __atomic_load_n(&r_released, __ATOMIC_ACQUIRE);
    w_cur_writer = rw.__data.__cur_writer;
    w_relock = pthread_rwlock_wrlock(&rw);
    if (w_lock == 0) pthread_rwlock_unlock(&rw);
    return NULL;
}

/* ------------------------------------------------------------ main */

static void start(pthread_t *th, void *(*fn)(void *), void *arg)
{
    int e = pthread_create(th, NULL, fn, arg);
    if (e != 0) die("pthread_create: %s", strerror(e));
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_seed = fresh_seed();
    const long FUTEX[] = {SYS_futex, -1};

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) DIE_ERRNO("sigaction");
    /* The process-wide pending signal: blocked in every thread (inherited). */
    const int shared_sig = SIGRTMIN + 12;
    sigset_t base;
    sigemptyset(&base);
    sigaddset(&base, shared_sig);
    pthread_sigmask(SIG_BLOCK, &base, NULL);

    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
    if (pthread_mutex_init(&hold_m, &ma) != 0) die("mutex init");
    pthread_mutexattr_setprotocol(&ma, PTHREAD_PRIO_INHERIT);
    if (pthread_mutex_init(&pi_m, &ma) != 0) die("PI mutex init");
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    if (pthread_mutex_init(&rob_m, &ma) != 0) die("robust mutex init");

    for (int i = 0; i < NW; i++) {
        struct worker *w = &workers[i];
        w->idx = i;
        w->tls_expect = mix64(g_seed + 0x1000 + (uint64_t)i);
        snprintf(w->name, sizeof w->name, "crw-%d-%04x", i, (unsigned)(w->tls_expect & 0xffff));
        w->alt = malloc(ALTSZ);
        if (!w->alt) die("out of memory");
        w->own_sig = SIGRTMIN + 2 + i;
        start(&w->th, worker_main, w);
    }
    for (int i = 0; i < NW; i++) {
        if (!wait_flag(&workers[i].started, 10)) die("worker %d did not start", i);
        for (int k = 1; k <= 2; k++) {
            union sigval v = {.sival_int = i * 1000 + k};
            if (pthread_sigqueue(workers[i].th, workers[i].own_sig, v) != 0) die("pthread_sigqueue");
        }
    }
    union sigval sv = {.sival_int = (int)(g_seed & 0x7fffffff)};
    if (sigqueue(getpid(), shared_sig, sv) != 0) DIE_ERRNO("sigqueue");

    pthread_t th_H, th_B, th_PB, th_R, th_W;
    start(&th_H, holder_main, NULL);
    if (!wait_flag(&h_held, 10)) die("holder did not lock");
    start(&th_B, blocker_main, NULL);
    start(&th_PB, pi_blocker_main, NULL);
    start(&th_R, reader_main, NULL);
    if (!wait_flag(&r_held, 10)) die("reader did not lock");
    start(&th_W, writer_main, NULL);
    while (!tid_B || !tid_PB || !tid_W) sleep_ms(1);
    wait_blocked_in(tid_B, FUTEX, "B (on the mutex H holds)");
    wait_blocked_in(tid_PB, FUTEX, "PB (on the PI mutex H holds)");
    wait_blocked_in(tid_W, FUTEX, "W (taking the rwlock R reads)");
    /* What the checks rely on, as glibc left it. */
    if (hold_m.__data.__owner != tid_H) die("hold_m owner %d, H is %d", hold_m.__data.__owner, (int)tid_H);
    if (((unsigned)pi_m.__data.__lock & FUTEX_TID_MASK) != (unsigned)tid_H || !((unsigned)pi_m.__data.__lock & FUTEX_WAITERS))
        die("pi_m word %#x, H is %d", (unsigned)pi_m.__data.__lock, (int)tid_H);
    /* Some turns done by everyone before the checkpoint. */
    for (;;) {
        pthread_mutex_lock(&m);
        uint64_t t = turn;
        pthread_mutex_unlock(&m);
        if (t >= 50 * NW) break;
        sleep_ms(1);
    }
    char tids[1024];
    size_t o = (size_t)snprintf(tids, sizeof tids, "main %d\n", (int)getpid());
    for (int i = 0; i < NW; i++) o += (size_t)snprintf(tids + o, sizeof tids - o, "worker%d %d\n", i, (int)workers[i].tid);
    snprintf(tids + o, sizeof tids - o, "H %d\nB %d\nPB %d\nR %d\nW %d\n", (int)tid_H, (int)tid_B, (int)tid_PB, (int)tid_R, (int)tid_W);
    write_file("tids", tids, strlen(tids));
    announce_ready();
    wait_go(NULL);

    /* ---- the workers: stop the turns, their own checks, then pthread_kill each. */
    pthread_mutex_lock(&m);
    stop = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
    for (int i = 0; i < NW; i++)
        TCHECK("join", wait_flag(&workers[i].checked, 10), "worker %d never got past the turns", i);
    for (int k = 0; k < NW; k++) {
        int before = __atomic_load_n(&usr1_hits, __ATOMIC_SEQ_CST);
        int to = sabotage("kill") ? (k + 1) % NW : k;
        int e = pthread_kill(workers[to].th, SIGUSR1);
        double end = mono_now() + 2;
        while (__atomic_load_n(&usr1_hits, __ATOMIC_SEQ_CST) == before && mono_now() < end) sleep_ms(1);
        TCHECK("kill", e == 0 && usr1_hits == before + 1 && usr1_last_slot == k && usr1_last_tid == workers[k].tid && usr1_on_alt,
               "pthread_kill(worker %d): error %d, handled %d times, in worker %d (tid %d, expected %d), on its alt stack: %d", k, e,
               usr1_hits - before, usr1_last_slot, (int)usr1_last_tid, (int)workers[k].tid, usr1_on_alt);
    }
    __atomic_store_n(&release_workers, 1, __ATOMIC_RELEASE);
    int joined[NW];
    for (int i = 0; i < NW; i++) {
        int e = join_within(workers[i].th, 3, NULL);
        joined[i] = e == 0;
        TCHECK("join", e == 0, "worker %d (tid %d) could not be joined: %s", i, (int)workers[i].tid, strerror(e));
    }

    /* The arithmetic, replayed: turn t belongs to worker t % 8, its round t / 8. */
    pthread_mutex_lock(&m);
    if (sabotage("turns")) shared_acc ^= 1ULL << 40;
    uint64_t T = turn, got_shared = shared_acc;
    pthread_mutex_unlock(&m);
    uint64_t want_shared = 0, want_acc[NW] = {0}, want_rounds[NW] = {0};
    for (uint64_t t = 0; t < T; t++) {
        int i = (int)(t % NW);
        uint64_t x = step_value(i, t / NW);
        want_shared = want_shared * 6364136223846793005ULL + x;
        want_acc[i] = rotl64(want_acc[i], 7) ^ x;
        want_rounds[i]++;
    }
    TCHECK("turns", got_shared == want_shared && T >= 50 * NW, "after %llu turns the shared value is %#llx, expected %#llx",
           (unsigned long long)T, (unsigned long long)got_shared, (unsigned long long)want_shared);
    for (int i = 0; i < NW; i++)
        if (joined[i])
            TCHECK("acc", workers[i].acc == want_acc[i] && workers[i].rounds == want_rounds[i],
                   "worker %d: %llu turns, accumulator %#llx; expected %llu turns, %#llx", i, (unsigned long long)workers[i].rounds,
                   (unsigned long long)workers[i].acc, (unsigned long long)want_rounds[i], (unsigned long long)want_acc[i]);

    /* ---- the process-wide queued signal. */
    sigset_t sh;
    sigemptyset(&sh);
    sigaddset(&sh, shared_sig);
    struct timespec zero = {0, 0};
    siginfo_t si;
    if (sabotage("shared_pending")) sigtimedwait(&sh, &si, &zero);
    memset(&si, 0, sizeof si);
    int got = sigtimedwait(&sh, &si, &zero);
    TCHECK("shared_pending", got == shared_sig && si.si_value.sival_int == sv.sival_int && si.si_code == SI_QUEUE,
           "process-wide signal %d: got %d value %d code %d", shared_sig, got, si.si_value.sival_int, si.si_code);

    /* ---- H's mutexes: owned by H's TID; not ours to unlock. */
    pid_t me = kernel_tid();
    if (sabotage("owner")) hold_m.__data.__owner = me;
    int owner = hold_m.__data.__owner;
    int e_main = pthread_mutex_unlock(&hold_m);
    TCHECK("owner", owner == tid_H && e_main == EPERM, "mutex held across the checkpoint: owner %d (H is %d), unlock by main: %s", owner,
           (int)tid_H, strerror(e_main));
    pid_t pi_expect = sabotage("pi") ? tid_H + 1 : tid_H;
    unsigned word = (unsigned)pi_m.__data.__lock;
    int e_pi_main = pthread_mutex_unlock(&pi_m);
    TCHECK("pi", (word & FUTEX_TID_MASK) == (unsigned)pi_expect && (word & FUTEX_WAITERS) && e_pi_main == EPERM,
           "PI mutex word %#x (H is %d, a waiter expected), unlock by main: %s", word, (int)pi_expect, strerror(e_pi_main));
    __atomic_store_n(&h_go, 1, __ATOMIC_RELEASE);
    int eh = join_within(th_H, 5, NULL);
    int eb = join_within(th_B, 5, NULL);
    int epb = join_within(th_PB, 5, NULL);
    TCHECK("join", eh == 0 && eb == 0 && epb == 0, "H/B/PB joins: %s, %s, %s", strerror(eh), strerror(eb), strerror(epb));
    TCHECK("owner", h_relock == EDEADLK && h_unlock == 0, "H after restore: relock %s (expected EDEADLK), unlock %s", strerror(h_relock),
           strerror(h_unlock));
    if (sabotage("blocked")) b_saw_released = 0;
    TCHECK("blocked", eb == 0 && b_lock == 0 && b_saw_released == 1, "B: lock %s, after H let go: %d", strerror(b_lock), b_saw_released);
    TCHECK("pi", h_pi_relock == EDEADLK && h_pi_unlock == 0 && pb_lock == 0 && pb_saw_released == 1,
           "PI mutex: H relock %s unlock %s; PB lock %s after H let go: %d", strerror(h_pi_relock), strerror(h_pi_unlock),
           strerror(pb_lock), pb_saw_released);
    if (eh == 0) {
        int er = pthread_mutex_trylock(&rob_m);
        TCHECK("robust", er == EOWNERDEAD, "robust mutex left locked by the exited H: trylock %s (expected EOWNERDEAD)", strerror(er));
        if (er == EOWNERDEAD) {
            pthread_mutex_consistent(&rob_m);
            pthread_mutex_unlock(&rob_m);
        }
    }

    /* ---- the rwlock: R reads, W waits to write. */
    int e_try = pthread_rwlock_trywrlock(&rw);
    if (e_try == 0) pthread_rwlock_unlock(&rw);
    __atomic_store_n(&r_go, 1, __ATOMIC_RELEASE);
    int er2 = join_within(th_R, 5, NULL);
    int ew = join_within(th_W, 5, NULL);
    TCHECK("join", er2 == 0 && ew == 0, "R/W joins: %s, %s", strerror(er2), strerror(ew));
    pid_t w_expect = sabotage("rwlock") ? tid_W + 1 : tid_W;
    TCHECK("rwlock",
           e_try == EBUSY && r_unlock == 0 && w_lock == 0 && w_saw_released == 1 && w_cur_writer == w_expect && w_relock == EDEADLK,
           "trywrlock while R reads: %s; R unlock %s; W lock %s after R let go: %d, writer %d (W is %d), W relock %s (expected EDEADLK)",
           strerror(e_try), strerror(r_unlock), strerror(w_lock), w_saw_released, w_cur_writer, (int)w_expect, strerror(w_relock));
    return finish();
}
