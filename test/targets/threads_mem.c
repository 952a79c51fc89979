/*
 * threads_mem: N threads (default 4), each filling its own M MiB (default 8)
 * of anonymous memory with its own pattern, then ticking (a 10 ms sleep
 * loop) until go. After go every thread checks its memory and its TID and is
 * joined with a deadline. `threads_mem W N M`; also the bench's
 * "16 threads x 64 MiB" process.
 */
#define TARGET_NAME "threads_mem"
#include "threads_common.h"
#include <sys/mman.h>

static const char *const KEYS[] = {"memory", "tid", "ticks", NULL};

#define MAXT 256

static uint64_t g_seed;
static size_t g_bytes;
static volatile int go_seen;

struct tinfo {
    pthread_t th;
    int idx;
    pid_t tid;
    uint64_t *mem;
    volatile uint64_t ticks;
    volatile int filled;
    uint64_t ticks_at_go;
    int mem_ok, tid_ok;
};
static struct tinfo T[MAXT];

static void *thread_main(void *arg)
{
    struct tinfo *t = arg;
    t->tid = kernel_tid();
    size_t words = g_bytes / 8;
    uint64_t s = mix64(g_seed ^ (uint64_t)t->idx) | 1;
    for (size_t i = 0; i < words; i++) t->mem[i] = xorshift64(&s);
    __atomic_store_n(&t->filled, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&go_seen, __ATOMIC_ACQUIRE)) {
        t->ticks = t->ticks + 1;
        sleep_ms(10);
    }
    if (sabotage("memory") && t->idx == 0) t->mem[words / 2] ^= 1;
    s = mix64(g_seed ^ (uint64_t)t->idx) | 1;
    int ok = 1;
    for (size_t i = 0; i < words; i++)
        if (t->mem[i] != xorshift64(&s)) ok = 0;
    t->mem_ok = ok;
    t->tid_ok = kernel_tid() == t->tid && !(sabotage("tid") && t->idx == 0);
    return NULL;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    int n = argc > 2 ? atoi(argv[2]) : 4;
    long mib = argc > 3 ? atol(argv[3]) : 8;
    if (n < 1 || n > MAXT || mib < 1) die("usage: threads_mem W [THREADS 1..%d] [MIB per thread]", MAXT);
    g_seed = fresh_seed();
    g_bytes = (size_t)mib << 20;
    for (int i = 0; i < n; i++) {
        T[i].idx = i;
        T[i].mem = mmap(NULL, g_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (T[i].mem == MAP_FAILED) DIE_ERRNO("mmap");
        if (pthread_create(&T[i].th, NULL, thread_main, &T[i]) != 0) die("pthread_create");
    }
    for (int i = 0; i < n; i++)
        while (!__atomic_load_n(&T[i].filled, __ATOMIC_ACQUIRE) || T[i].ticks == 0) sleep_ms(1);
    announce_ready();
    wait_go(NULL);
    for (int i = 0; i < n; i++) T[i].ticks_at_go = T[i].ticks;
    /* Everyone still ticks after go. */
    double end = mono_now() + 5;
    for (int i = 0; i < n; i++)
        while (T[i].ticks < T[i].ticks_at_go + 2 && mono_now() < end) sleep_ms(1);
    for (int i = 0; i < n; i++) {
        int ticking = T[i].ticks >= T[i].ticks_at_go + 2 && !(sabotage("ticks") && i == n - 1);
        TCHECK("ticks", ticking, "thread %d stopped ticking (%llu at go, %llu now)", i, (unsigned long long)T[i].ticks_at_go,
               (unsigned long long)T[i].ticks);
    }
    __atomic_store_n(&go_seen, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < n; i++) {
        int e = join_within(T[i].th, 30, NULL);
        TCHECK("ticks", e == 0, "thread %d could not be joined: %s", i, strerror(e));
        if (e != 0) continue;
        TCHECK("memory", T[i].mem_ok, "thread %d: its %ld MiB differ from its pattern", i, mib);
        TCHECK("tid", T[i].tid_ok, "thread %d: gettid() changed from %d", i, (int)T[i].tid);
    }
    return finish();
}
