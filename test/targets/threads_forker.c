/*
 * threads_forker: a multi-threaded process with a child (a process tree).
 * Three threads tick in a 10 ms sleep loop; the child (forked by the main
 * thread) polls for W/go and exits 42. After go the parent reaps the child
 * and stops and joins its threads, which must have kept ticking.
 * `threads_forker W zombie`: the child exits 42 at once and stays a zombie
 * (unreaped) until go - crest refuses zombies.
 */
#define TARGET_NAME "threads_forker"
#include "threads_common.h"
#include <sys/wait.h>

static const char *const KEYS[] = {"child", "threads", NULL};

#define NT 3
static volatile int stop;
static volatile uint64_t ticks[NT];

static void *ticker(void *arg)
{
    int i = (int)(uintptr_t)arg;
    while (!stop) {
        ticks[i] = ticks[i] + 1;
        sleep_ms(10);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    pthread_t th[NT];
    for (int i = 0; i < NT; i++)
        if (pthread_create(&th[i], NULL, ticker, (void *)(uintptr_t)i) != 0) die("pthread_create");
    for (int i = 0; i < NT; i++)
        while (ticks[i] == 0) sleep_ms(1);
    int zombie = argc > 2 && strcmp(argv[2], "zombie") == 0;
    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) {
        while (!zombie && access(g_go_path, F_OK) != 0) sleep_ms(10);
        _exit(sabotage("child") ? 3 : 42);
    }
    if (zombie) {
        siginfo_t si;
        if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT) != 0) DIE_ERRNO("waitid");
    }
    write_filef("child", "%d\n", (int)child);
    announce_ready();
    wait_go(NULL);
    int status = 0;
    pid_t w = waitpid(child, &status, 0);
    CHECK("child", w == child && WIFEXITED(status) && WEXITSTATUS(status) == 42,
          "child %d: waitpid %d, status %#x (expected exit 42)", (int)child, (int)w, status);
    uint64_t at_go[NT];
    for (int i = 0; i < NT; i++) at_go[i] = ticks[i];
    double end = mono_now() + 5;
    for (int i = 0; i < NT; i++)
        while (ticks[i] < at_go[i] + 2 && mono_now() < end) sleep_ms(1);
    stop = 1;
    for (int i = 0; i < NT; i++) {
        int e = join_within(th[i], 5, NULL);
        int ok = e == 0 && ticks[i] >= at_go[i] + 2 && !(sabotage("threads") && i == 1);
        CHECK("threads", ok, "thread %d: join %s, ticks %llu at go, %llu at the end", i, strerror(e), (unsigned long long)at_go[i],
              (unsigned long long)ticks[i]);
    }
    return finish();
}
