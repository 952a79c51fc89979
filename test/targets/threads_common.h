/*
 * Helpers of the multi-threaded targets (threads_*.c), on top of common.h:
 * kernel thread ids, what a thread is blocked in (from /proc), joins with a
 * deadline (a thread lost or left blocked by a restore must end in FAIL, not
 * in a hang), and a deterministic mixing function for the arithmetic.
 */
#ifndef CREST_THREADS_COMMON_H
#define CREST_THREADS_COMMON_H

#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

/* The kernel's id of the calling thread (never glibc's cached copy). */
static UNUSED pid_t kernel_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* splitmix64: the deterministic sequence the arithmetic threads fold. */
static UNUSED uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static UNUSED uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/*
 * The system call thread `tid` of this process is blocked in (first field of
 * /proc/self/task/TID/syscall), -1 while it runs, -2 when unreadable.
 */
static UNUSED long thread_syscall(pid_t tid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -2;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -2;
    buf[n] = 0;
    if (strncmp(buf, "running", 7) == 0) return -1;
    return strtol(buf, NULL, 10);
}

/* The state letter of thread `tid` (/proc/self/task/TID/stat), '?' when unreadable. */
static UNUSED char thread_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

/*
 * Waits (up to 10 s) until thread `tid` sleeps in one of the system calls
 * `nrs` (terminated by -1): the state the checkpoint must catch it in.
 */
static UNUSED void wait_blocked_in(pid_t tid, const long *nrs, const char *what)
{
    double end = mono_now() + 10;
    for (;;) {
        long nr = thread_syscall(tid);
        if (thread_state(tid) == 'S')
            for (const long *p = nrs; *p >= 0; p++)
                if (nr == *p) return;
        if (mono_now() > end) die("%s (thread %d) never blocked in the expected system call (now in %ld)", what, (int)tid, nr);
        sleep_ms(1);
    }
}

/* pthread_timedjoin_np with a deadline `secs` from now; 0 or the error (ETIMEDOUT: the thread is lost or stuck). */
static UNUSED int join_within(pthread_t th, double secs, void **ret)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(secs * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return pthread_timedjoin_np(th, ret, &ts);
}

/* Spins (sleeping 1 ms) until *flag is non-zero or `secs` pass; returns whether it became set. */
static UNUSED int wait_flag(volatile int *flag, double secs)
{
    double end = mono_now() + secs;
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        if (mono_now() > end) return 0;
        sleep_ms(1);
    }
    return 1;
}

/* The calling thread's blocked set as a bit mask of signals 1..64 (bit n-1 for signal n). */
static UNUSED uint64_t mask_bits(const sigset_t *s)
{
    uint64_t m = 0;
    for (int sig = 1; sig <= 64; sig++)
        if (sigismember(s, sig) == 1) m |= 1ULL << (sig - 1);
    return m;
}

static UNUSED uint64_t current_mask_bits(void)
{
    sigset_t s;
    sigemptyset(&s);
    pthread_sigmask(SIG_BLOCK, NULL, &s);
    return mask_bits(&s);
}

/* fail() from any thread: common.h's verdict buffer is not thread-safe. */
static UNUSED pthread_mutex_t g_fail_mu = PTHREAD_MUTEX_INITIALIZER;

#define TCHECK(key, cond, ...)                                                                                     \
    do {                                                                                                           \
        if (!(cond)) {                                                                                             \
            pthread_mutex_lock(&g_fail_mu);                                                                        \
            fail((key), __VA_ARGS__);                                                                              \
            pthread_mutex_unlock(&g_fail_mu);                                                                      \
        }                                                                                                          \
    } while (0)

/* glibc's own signals (SIGCANCEL, SIGSETXID): never compared. */
#define GLIBC_INTERNAL_SIGS ((1ULL << (32 - 1)) | (1ULL << (33 - 1)))

#endif
