/*
 * threads2: a process with two threads (restored with both thread ids).
 * The second thread sleeps in a loop until the main thread, after go, asks
 * it to finish; it then reports how many rounds it ran.
 */
#define TARGET_NAME "threads2"
#include "common.h"
#include <pthread.h>

static const char *const KEYS[] = {"thread", NULL};

static volatile int stop;
static volatile unsigned long rounds;

static void *worker(void *arg)
{
    (void)arg;
    while (!stop) {
        rounds = rounds + 1;
        sleep_ms(10);
    }
    return (void *)(uintptr_t)0x5eed;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
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
    return finish();
}
