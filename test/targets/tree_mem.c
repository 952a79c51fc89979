/*
 * tree_mem: a process tree of N processes (default 4: the parent and N-1
 * children it forks), each filling its own M MiB (default 8) of anonymous
 * memory with its own pattern, then ticking (a 10 ms sleep loop) until go.
 * After go every child checks its memory and its PID and exits 0 (1 if
 * wrong), and the parent checks its own, reaps every child (with a
 * deadline) and judges their exit codes. `tree_mem W N M`; also the bench's
 * "16 processes x 64 MiB" tree.
 */
#define TARGET_NAME "tree_mem"
#include "common.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

static const char *const KEYS[] = {"memory", "children", NULL};

#define MAXP 256

static uint64_t g_seed;
static size_t g_bytes;

static void fill(uint64_t *mem, int idx)
{
    uint64_t s = (g_seed ^ ((uint64_t)idx * 0x9E3779B97F4A7C15ULL)) | 1;
    for (size_t i = 0; i < g_bytes / 8; i++) mem[i] = xorshift64(&s);
}

static int check(const uint64_t *mem, int idx)
{
    uint64_t s = (g_seed ^ ((uint64_t)idx * 0x9E3779B97F4A7C15ULL)) | 1;
    for (size_t i = 0; i < g_bytes / 8; i++)
        if (mem[i] != xorshift64(&s)) return 0;
    return 1;
}

/* A child: its memory, a "filled" byte to the parent, ticks until go, then judges itself. */
static _Noreturn void child_main(int idx, uint64_t *mem, int up)
{
    pid_t me = getpid();
    fill(mem, idx);
    if (write(up, "f", 1) != 1) _exit(3);
    close(up);
    while (access(g_go_path, F_OK) != 0) sleep_ms(10);
    if (sabotage("children") && idx == 1) mem[g_bytes / 16] ^= 1;
    _exit(check(mem, idx) && getpid() == me ? 0 : 1);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    int n = argc > 2 ? atoi(argv[2]) : 4;
    long mib = argc > 3 ? atol(argv[3]) : 8;
    if (n < 1 || n > MAXP || mib < 1) die("usage: tree_mem W [PROCESSES 1..%d] [MIB per process]", MAXP);
    g_seed = fresh_seed();
    g_bytes = (size_t)mib << 20;
    uint64_t *mem = mmap(NULL, g_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) DIE_ERRNO("mmap");
    pid_t kids[MAXP];
    int p[2];
    if (pipe(p) != 0) DIE_ERRNO("pipe");
    for (int i = 1; i < n; i++) {
        kids[i] = fork();
        if (kids[i] < 0) DIE_ERRNO("fork");
        if (kids[i] == 0) {
            close(p[0]);
            child_main(i, mem, p[1]);
        }
    }
    close(p[1]);
    fill(mem, 0);
    for (int i = 1; i < n; i++) {
        char c;
        if (read(p[0], &c, 1) != 1) die("child %d did not fill its memory", i);
    }
    close(p[0]);
    announce_ready();
    wait_go(NULL);
    if (sabotage("memory")) mem[g_bytes / 16] ^= 1;
    int mem_ok = check(mem, 0);
    CHECK("memory", mem_ok, "the parent's %ld MiB differ from its pattern", mib);
    int bad = 0;
    double end = mono_now() + 30;
    for (int i = 1; i < n; i++) {
        int st = 0;
        pid_t w;
        while ((w = waitpid(kids[i], &st, WNOHANG)) == 0 && mono_now() < end) sleep_ms(5);
        if (w != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (bad++ == 0) fail("children", "child %d (pid %d): waitpid %d, status %#x (expected exit 0: its memory and pid unchanged)", i, (int)kids[i], (int)w, st);
            if (w == 0) kill(kids[i], SIGKILL);
        }
    }
    return finish();
}
