/*
 * threads_churn: threads created and exiting all the time, so that a
 * checkpoint finds threads being born, running, and dying.
 * Two spawners loop: each round creates a joinable worker and a detached
 * one (both compute a value from their argument; the detached one adds it
 * to a shared sum and counts itself done, the joinable one returns it) and
 * joins the joinable one, checking what it returned; a third thread creates
 * bursts of 4 workers and joins them. A short sleep per round keeps it from
 * taking all the CPU. Before ready a few hundred threads have come and gone.
 * After go: the spawners stop and are joined (with deadlines), every
 * detached worker ever created finishes (none was lost), every value is the
 * right one, and a thread created now runs and is joined.
 */
#define TARGET_NAME "threads_churn"
#include "threads_common.h"

static const char *const KEYS[] = {"joined", "results", "detached", "sum", "spawn_after", NULL};

#define NSPAWN 3

static uint64_t g_seed;
static volatile int stop;

struct spawner {
    pthread_t th;
    int idx;
    uint64_t rounds;      /* joinable (or burst) workers created, joined and checked */
    uint64_t detached;    /* detached workers created */
    uint64_t bad_results; /* joinable workers that returned the wrong value */
    uint64_t join_failures;
    volatile int counted; /* rounds published for the main thread */
};
static struct spawner S[NSPAWN];

static uint64_t d_done;   /* atomic: detached workers finished */
static uint64_t d_sum;    /* atomic: their values, added */

static uint64_t value_of(uint64_t k)
{
    uint64_t v = k;
    for (int i = 0; i < 64; i++) v = mix64(v ^ g_seed);
    return v;
}

static void *joinable_main(void *arg)
{
    return (void *)(uintptr_t)value_of((uint64_t)(uintptr_t)arg);
}

static void *detached_main(void *arg)
{
    uint64_t v = value_of((uint64_t)(uintptr_t)arg);
    __atomic_add_fetch(&d_sum, v, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&d_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* The argument of the n-th worker of spawner s (joinable or detached). */
static uint64_t arg_of(int s, int detached, uint64_t n)
{
    return ((uint64_t)s << 48) | ((uint64_t)detached << 47) | n;
}

/*
 * Joins with a deadline, three times over: a join in progress at a
 * checkpoint waits (in the kernel) for its absolute deadline, which has
 * passed when the image is restored later; a thread really lost still fails.
 */
static void check_joined(struct spawner *sp, pthread_t th, uint64_t arg)
{
    void *ret = NULL;
    int e = ETIMEDOUT;
    for (int tries = 0; tries < 3 && e == ETIMEDOUT; tries++) e = join_within(th, 5, &ret);
    if (e != 0) {
        sp->join_failures++;
        return;
    }
    if ((uint64_t)(uintptr_t)ret != value_of(arg)) sp->bad_results++;
}

static void *spawner_main(void *arg)
{
    struct spawner *sp = arg;
    pthread_attr_t det;
    pthread_attr_init(&det);
    pthread_attr_setdetachstate(&det, PTHREAD_CREATE_DETACHED);
    while (!stop) {
        if (sp->idx < NSPAWN - 1) {
            uint64_t ja = arg_of(sp->idx, 0, sp->rounds);
            pthread_t j, d;
            if (pthread_create(&j, NULL, joinable_main, (void *)(uintptr_t)ja) != 0) die("pthread_create");
            uint64_t da = arg_of(sp->idx, 1, sp->detached);
            if (pthread_create(&d, &det, detached_main, (void *)(uintptr_t)da) != 0) die("pthread_create (detached)");
            sp->detached++;
            check_joined(sp, j, ja);
        } else {
            /* A burst of 4, then join them all. */
            pthread_t b[4];
            uint64_t ba[4];
            for (int i = 0; i < 4; i++) {
                ba[i] = arg_of(sp->idx, 0, sp->rounds * 4 + (uint64_t)i);
                if (pthread_create(&b[i], NULL, joinable_main, (void *)(uintptr_t)ba[i]) != 0) die("pthread_create (burst)");
            }
            for (int i = 0; i < 4; i++) check_joined(sp, b[i], ba[i]);
        }
        sp->rounds++;
        __atomic_store_n(&sp->counted, (int)(sp->rounds > 1000000 ? 1000000 : sp->rounds), __ATOMIC_RELEASE);
        struct timespec ts = {0, 200 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *after_main(void *arg)
{
    (void)arg;
    return (void *)(uintptr_t)kernel_tid();
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_seed = fresh_seed();
    for (int i = 0; i < NSPAWN; i++) {
        S[i].idx = i;
        if (pthread_create(&S[i].th, NULL, spawner_main, &S[i]) != 0) die("pthread_create (spawner)");
    }
    for (int i = 0; i < NSPAWN; i++)
        while (__atomic_load_n(&S[i].counted, __ATOMIC_ACQUIRE) < 100) sleep_ms(1);
    announce_ready();
    wait_go(NULL);

    stop = 1;
    int spawners_joined = 1;
    for (int i = 0; i < NSPAWN; i++) {
        int e = join_within(S[i].th, 10, NULL);
        if (e != 0) spawners_joined = 0;
        TCHECK("joined", e == 0, "spawner %d could not be joined: %s", i, strerror(e));
    }
    uint64_t rounds = 0, detached = 0, bad = 0, jfail = 0;
    for (int i = 0; i < NSPAWN; i++) {
        rounds += S[i].rounds;
        detached += S[i].detached;
        bad += S[i].bad_results;
        jfail += S[i].join_failures;
    }
    if (sabotage("joined")) jfail++;
    TCHECK("joined", jfail == 0, "%llu workers could not be joined", (unsigned long long)jfail);
    if (sabotage("results")) bad++;
    TCHECK("results", bad == 0 && rounds >= 300, "%llu of %llu joined workers returned a wrong value", (unsigned long long)bad,
           (unsigned long long)rounds);
    if (spawners_joined) {
        /* Every detached worker ever created finishes (a lost thread never would). */
        double end = mono_now() + 5;
        uint64_t expect = sabotage("detached") ? detached + 1 : detached;
        while (__atomic_load_n(&d_done, __ATOMIC_SEQ_CST) < expect && mono_now() < end) sleep_ms(1);
        uint64_t done = __atomic_load_n(&d_done, __ATOMIC_SEQ_CST);
        TCHECK("detached", done == expect, "%llu of %llu detached workers finished", (unsigned long long)done, (unsigned long long)expect);
        uint64_t want = 0;
        for (int s = 0; s < NSPAWN; s++)
            for (uint64_t n = 0; n < S[s].detached; n++) want += value_of(arg_of(s, 1, n));
        uint64_t got = __atomic_load_n(&d_sum, __ATOMIC_SEQ_CST);
        if (sabotage("sum")) got ^= 8;
        TCHECK("sum", got == want, "detached workers' sum %#llx, expected %#llx", (unsigned long long)got, (unsigned long long)want);
    }
    /* A thread created now. */
    pthread_t a;
    void *ret = NULL;
    int e = pthread_create(&a, NULL, after_main, NULL);
    if (e == 0) e = join_within(a, 5, &ret);
    if (sabotage("spawn_after")) ret = NULL;
    TCHECK("spawn_after", e == 0 && (pid_t)(uintptr_t)ret > 0 && (pid_t)(uintptr_t)ret != getpid(),
           "a thread created after go: %s, its tid %d", strerror(e), (int)(uintptr_t)ret);
    char report[256];
    int n = snprintf(report, sizeof report, "rounds %llu detached %llu\n", (unsigned long long)rounds, (unsigned long long)detached);
    write_file("report", report, (size_t)n);
    return finish();
}
