/*
 * threads_signals: a thread under a stream of queued signals across the
 * checkpoint. A sender thread queues SIGRTMIN+3 to a receiver thread with
 * pthread_sigqueue, values 0, 1, 2 ... (at most 64 in flight); the
 * receiver's SA_SIGINFO handler checks each value is the next one. Before
 * ready some thousands have gone through. After go the sender stops; every
 * signal ever queued arrives (none lost), in order, with its value, at the
 * receiver, which is joined; the main thread saw none of them.
 */
#define TARGET_NAME "threads_signals"
#include "threads_common.h"

static const char *const KEYS[] = {"lost", "order", "thread", NULL};

#define INFLIGHT 64

static volatile int stop_send;
static volatile int recv_stop;
static pthread_t th_recv, th_send;
static volatile pid_t tid_recv;
static uint64_t sent;           /* atomic */
static uint64_t received;       /* atomic */
static volatile uint64_t out_of_order, wrong_thread, first_bad_value = UINT64_MAX, first_bad_at;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    uint64_t n = __atomic_load_n(&received, __ATOMIC_RELAXED);
    uint64_t v = (uint64_t)(uint32_t)si->si_value.sival_int;
    if (v != (n & 0xffffffffULL) || si->si_code != SI_QUEUE) {
        if (out_of_order == 0) {
            first_bad_value = v;
            first_bad_at = n;
        }
        out_of_order++;
    }
    if (kernel_tid() != tid_recv) wrong_thread++;
    __atomic_store_n(&received, n + 1, __ATOMIC_RELEASE);
}

static void *receiver(void *arg)
{
    (void)arg;
    tid_recv = kernel_tid();
    pthread_setname_np(pthread_self(), "crs-receiver");
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 3);
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
    while (!recv_stop) {
        /* Busy part and sleeping part: signals arrive in both. */
        for (volatile int i = 0; i < 2000; i++) {
        }
        struct timespec ts = {0, 20 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *sender(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "crs-sender");
    while (!stop_send) {
        uint64_t n = __atomic_load_n(&sent, __ATOMIC_RELAXED);
        if (n - __atomic_load_n(&received, __ATOMIC_ACQUIRE) >= INFLIGHT) {
            struct timespec ts = {0, 10 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        union sigval v = {.sival_int = (int)(uint32_t)n};
        int e = pthread_sigqueue(th_recv, SIGRTMIN + 3, v);
        if (e == EAGAIN) continue;
        if (e != 0) die("pthread_sigqueue: %s", strerror(e));
        __atomic_store_n(&sent, n + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN + 3, &sa, NULL) != 0) DIE_ERRNO("sigaction");
    /* Blocked everywhere but in the receiver. */
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 3);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    if (pthread_create(&th_recv, NULL, receiver, NULL) != 0) die("pthread_create");
    while (!tid_recv) sleep_ms(1);
    if (pthread_create(&th_send, NULL, sender, NULL) != 0) die("pthread_create");
    while (__atomic_load_n(&received, __ATOMIC_ACQUIRE) < 5000) sleep_ms(1);
    announce_ready();
    wait_go(NULL);
    stop_send = 1;
    int es = join_within(th_send, 5, NULL);
    CHECK("thread", es == 0, "the sender could not be joined: %s", strerror(es));
    uint64_t want = __atomic_load_n(&sent, __ATOMIC_ACQUIRE);
    if (sabotage("lost")) want++;
    double end = mono_now() + 3;
    while (__atomic_load_n(&received, __ATOMIC_ACQUIRE) < want && mono_now() < end) sleep_ms(1);
    uint64_t got = __atomic_load_n(&received, __ATOMIC_ACQUIRE);
    recv_stop = 1;
    int er = join_within(th_recv, 5, NULL);
    CHECK("lost", got == want, "%llu signals queued to the receiver, %llu arrived", (unsigned long long)want, (unsigned long long)got);
    if (sabotage("order")) out_of_order++;
    CHECK("order", out_of_order == 0, "%llu signals out of order or not queued by us; the first: value %llu where %llu was next",
          (unsigned long long)out_of_order, (unsigned long long)first_bad_value, (unsigned long long)first_bad_at);
    if (sabotage("thread")) wrong_thread++;
    CHECK("thread", er == 0 && wrong_thread == 0, "receiver join %s; %llu signals handled by another thread", strerror(er),
          (unsigned long long)wrong_thread);
    return finish();
}
