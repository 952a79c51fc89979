/*
 * threads2: a process with two threads (restored with both thread ids).
 * The second thread sleeps in a loop until the main thread, after go, asks
 * it to finish; it then reports how many rounds it ran. Each thread also
 * reads its own capability sets (/proc/thread-self/status) before ready and
 * after go: a restore must never give a thread one it did not have (in the
 * cap and cycle modes crest-pidhelper drops all of them before the process
 * is rebuilt).
 */
#define TARGET_NAME "threads2"
#include "common.h"
#include <pthread.h>

static const char *const KEYS[] = {"thread", "caps", NULL};

/* CapInh, CapPrm, CapEff, CapBnd, CapAmb of the calling thread, in that order. */
static void own_caps(unsigned long long out[5])
{
    static const char *const names[5] = {"CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"};
    char buf[4096];
    int fd = open("/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) die("read /proc/thread-self/status");
    buf[n] = 0;
    for (int i = 0; i < 5; i++) {
        const char *p = strstr(buf, names[i]);
        if (!p) die("no %s in /proc/thread-self/status", names[i]);
        out[i] = strtoull(p + strlen(names[i]), NULL, 16);
    }
}

/* Every set now is a subset of the one before (none gained). */
static int no_new_caps(const unsigned long long before[5], const unsigned long long now[5])
{
    for (int i = 0; i < 5; i++)
        if (now[i] & ~before[i]) return 0;
    return 1;
}

static unsigned long long worker_before[5], worker_after[5];

static volatile int stop;
static volatile unsigned long rounds;

static void *worker(void *arg)
{
    (void)arg;
    own_caps(worker_before);
    while (!stop) {
        rounds = rounds + 1;
        sleep_ms(10);
    }
    own_caps(worker_after);
    return (void *)(uintptr_t)0x5eed;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    unsigned long long main_before[5], main_after[5];
    own_caps(main_before);
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0) die("pthread_create failed");
    while (rounds == 0) sleep_ms(1);
    announce_ready();
    wait_go(NULL);
    if (sabotage("thread")) pthread_cancel(th);
    stop = 1;
    void *ret = NULL;
    pthread_join(th, &ret);
    CHECK("thread", ret == (void *)(uintptr_t)0x5eed && rounds > 0, "second thread did not finish normally");
    own_caps(main_after);
    if (sabotage("caps")) main_after[2] |= 1ULL << 40;
    CHECK("caps", no_new_caps(main_before, main_after) && (ret != (void *)(uintptr_t)0x5eed || no_new_caps(worker_before, worker_after)),
          "a thread holds capabilities it did not have: main eff %llx (was %llx), worker eff %llx (was %llx)", main_after[2], main_before[2],
          worker_after[2], worker_before[2]);
    return finish();
}
