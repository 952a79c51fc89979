/*
 * Shared memory between the processes of a tree (test/cr/shm.test.ts): the
 * children of a shm_* target wait for W/go like their parent, and the two
 * sides then talk through the memory under test. A "slot" is two words in
 * it: the parent writes a token into the first, the child answers token+1
 * in the second. Only memory that is really one object in both processes
 * carries the answer; a copy in each would leave the parent waiting.
 */
#ifndef CREST_SHM_COMMON_H
#define CREST_SHM_COMMON_H
#include "common.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

/* How long a side waits for the other: generous on a loaded machine, short when a check is sabotaged. */
#define SHM_WAIT_MS (g_sabotage ? 1500L : 60000L)

/* Waits until *p == want (polling every millisecond); 1 when seen. */
static UNUSED int shm_wait(volatile uint64_t *p, uint64_t want)
{
    double end = mono_now() + (double)SHM_WAIT_MS / 1000.0;
    while (*p != want) {
        if (mono_now() > end) return 0;
        sleep_ms(1);
    }
    return 1;
}

/* The child's side of a slot: waits for the parent's token, answers token+1. 0 on success, else 1. */
static UNUSED int shm_answer(volatile uint64_t *slot, uint64_t token)
{
    if (!shm_wait(&slot[0], token)) return 1;
    slot[1] = token + 1;
    return 0;
}

/* The parent's side: writes the token, waits for the answer. 1 when it came. */
static UNUSED int shm_ask(volatile uint64_t *slot, uint64_t token)
{
    slot[0] = token;
    return shm_wait(&slot[1], token + 1);
}

/* Children wait for W/go too (without appending to W/resumed). */
static UNUSED void child_wait_go(void)
{
    while (access(g_go_path, F_OK) != 0) sleep_ms(10);
}

/* Reaps `child`; its exit status, or 100 + signal, or 200 when it could not be reaped. */
static UNUSED int reap(pid_t child)
{
    int st = 0;
    pid_t w;
    while ((w = waitpid(child, &st, 0)) < 0 && errno == EINTR) {
    }
    if (w != child) return 200;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 100 + WTERMSIG(st);
    return 200;
}

/* A byte of the pattern of region `k` at offset i (from a run-specific seed). */
static uint64_t g_seed;
static UNUSED unsigned char shm_pat(size_t i, int k)
{
    uint64_t z = g_seed ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL ^ (uint64_t)k << 56;
    z ^= z >> 29;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 32;
    return (unsigned char)z;
}

static UNUSED void shm_fill(unsigned char *p, size_t off, size_t len, int k)
{
    for (size_t i = 0; i < len; i++) p[i] = shm_pat(off + i, k);
}

/* Offset of the first byte of p[0..len) that is not region k's pattern, or -1. */
static UNUSED long shm_diff(const unsigned char *p, size_t off, size_t len, int k)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != shm_pat(off + i, k)) return (long)i;
    return -1;
}
#endif
