/*
 * tracked W: memory that changes in known ways between incremental
 * checkpoints, for the kernel write tracking (userfaultfd async
 * write-protect): every phase rewrites about 5% of a 64 MiB area (one page
 * of it through read(2), a write by the kernel) and changes the layout:
 *   phase 1: a new mapping R2 (made after the tracker was armed)
 *   phase 2: part of R1 unmapped; another part moved by mremap to R3
 *   phase 3: MADV_DONTNEED on part of R1 (zero again); R2 grown in place
 *            (half of the new part written, half left untouched);
 *            part of R1 made read-only (its VMA split)
 *   phase 5: every userfaultfd in the process closed (as a daemon closing
 *            its fds would: crest's tracker is gone)
 *   phase 4, 6+: the 5% only (phase 4 and on also a 16th of R2)
 * Protocol: after ready, the test writes W/go-N; the target first verifies
 * every page against what phases 0..N-1 must have left (the expected
 * contents are computed, not remembered), then runs phase N and writes
 * W/done-N with "ok" or what differed. W/go ends it: a last verification,
 * PASS or FAIL. Page contents mix a seed fresh to every run.
 */
#define TARGET_NAME "tracked"
#include "common.h"
#include <dirent.h>
#include <sys/mman.h>

#define PG 4096UL
#define R1_PAGES 16384
#define R2_PAGES 1024
#define R2_GROWN 1536
#define R3_PAGES 100
#define R1 ((char *)0x500000000000UL)
#define R2 ((char *)0x510000000000UL)
#define R3 ((char *)0x520000000000UL)

static uint64_t g_seed;
static int g_phase; /* phases done */

static uint64_t word(int region, long page, int version, long i)
{
    uint64_t x = g_seed ^ ((uint64_t)region << 56) ^ ((uint64_t)page << 20) ^ ((uint64_t)version << 12) ^ (uint64_t)i;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x | 1; /* never a zero word: a zero page is version 0 only */
}

static void fill(uint64_t *dst, int region, long page, int version)
{
    for (long i = 0; i < (long)(PG / 8); i++) dst[i] = word(region, page, version, i);
}

/* Written in phase k (k >= 1) of R1: about 5% of its pages. */
static int r1_written(long p, int k) { return (p * 7 + k * 3) % 20 == 0; }
/* The page of R1 a phase fills through read(2): clear of the ranges the layout changes touch. */
static long r1_kernel(int k) { return 5000 + k * 37L; }

static int r1_unmapped(long p, int after) { return after >= 2 && ((p >= 1000 && p < 1100) || (p >= 2000 && p < 2100)); }
static int r1_readonly(long p) { return p >= 4000 && p < 4100; }

/* Expected version of a page once phases 0..after are done: 0 zero, -1 not mapped. */
static int expect(int region, long p, int after)
{
    if (region == 1) {
        if (r1_unmapped(p, after)) return -1;
        int v = 1;
        for (int k = 1; k <= after; k++) {
            if (k == 3 && p >= 3000 && p < 3050) v = 0;
            if (r1_readonly(p) && k > 3) continue;
            if (r1_written(p, k) || p == r1_kernel(k)) v = k + 1;
        }
        return v;
    }
    if (region == 2) {
        if (after < 1 || p >= (after >= 3 ? R2_GROWN : R2_PAGES)) return -1;
        int v = p < R2_PAGES ? 2 : (p < 1280 ? 4 : 0);
        for (int k = 4; k <= after; k++) if (p % 16 == k % 16) v = k + 1;
        return v;
    }
    /* R3: pages 2000..2099 of R1 as they were after phase 1, moved in phase 2; every 10th rewritten then. */
    if (after < 2 || p >= R3_PAGES) return -1;
    if (p % 10 == 0) return 3;
    return expect(1, 2000 + p, 1);
}

static char *base(int region) { return region == 1 ? R1 : region == 2 ? R2 : R3; }
static long pages(int region) { return region == 1 ? R1_PAGES : region == 2 ? R2_GROWN : R3_PAGES; }

/* Checks every page of every region against phases 0..after; fails under `key`. */
static void verify_all(int after, const char *key)
{
    static uint64_t want[PG / 8];
    long bad = 0;
    for (int region = 1; region <= 3; region++) {
        for (long p = 0; p < pages(region); p++) {
            char *a = base(region) + p * PG;
            int v = expect(region, p, after);
            int mapped = madvise(a, PG, MADV_NORMAL) == 0;
            if (v < 0) {
                if (mapped && bad++ < 3) fail(key, "R%d page %ld is mapped, should not be", region, p);
                continue;
            }
            if (!mapped) {
                if (bad++ < 3) fail(key, "R%d page %ld is not mapped", region, p);
                continue;
            }
            if (v == 0) memset(want, 0, PG);
            else if (region == 3 && p % 10 != 0) fill(want, 1, 2000 + p, v); /* moved from R1 as it was */
            else fill(want, region, p, v);
            if (memcmp(a, want, PG) != 0 && bad++ < 3) fail(key, "R%d page %ld differs from version %d", region, p, v);
        }
    }
    if (bad > 3) fail(key, "%ld pages wrong in all", bad);
}

static void close_userfaultfds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) DIE_ERRNO("/proc/self/fd");
    struct dirent *e;
    int fds[64], n = 0;
    while ((e = readdir(d)) && n < 64) {
        char path[300], link[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, link, sizeof link - 1);
        if (k <= 0) continue;
        link[k] = 0;
        if (strcmp(link, "anon_inode:[userfaultfd]") == 0) fds[n++] = atoi(e->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++) close(fds[i]);
    write_filef("closed-uffd", "%d\n", n);
}

static void run_phase(int k)
{
    if (k == 1) {
        if (mmap(R2, R2_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != R2) DIE_ERRNO("mmap R2");
        for (long p = 0; p < R2_PAGES; p++) fill((uint64_t *)(R2 + p * PG), 2, p, 2);
    }
    if (k == 2) {
        if (munmap(R1 + 1000 * PG, 100 * PG) != 0) DIE_ERRNO("munmap");
        if (mremap(R1 + 2000 * PG, R3_PAGES * PG, R3_PAGES * PG, MREMAP_MAYMOVE | MREMAP_FIXED, R3) != R3) DIE_ERRNO("mremap R3");
        for (long p = 0; p < R3_PAGES; p += 10) fill((uint64_t *)(R3 + p * PG), 3, p, 3);
    }
    if (k == 3) {
        if (madvise(R1 + 3000 * PG, 50 * PG, MADV_DONTNEED) != 0) DIE_ERRNO("madvise");
        if (mremap(R2, R2_PAGES * PG, R2_GROWN * PG, 0) != R2) DIE_ERRNO("mremap grow R2");
        for (long p = R2_PAGES; p < 1280; p++) fill((uint64_t *)(R2 + p * PG), 2, p, 4);
    }
    if (k == 5) close_userfaultfds();
    if (k >= 4)
        for (long p = k % 16; p < R2_GROWN; p += 16) fill((uint64_t *)(R2 + p * PG), 2, p, k + 1);
    for (long p = 0; p < R1_PAGES; p++) {
        if (!r1_written(p, k) || p == r1_kernel(k) || r1_unmapped(p, k) || (k > 3 && r1_readonly(p))) continue;
        fill((uint64_t *)(R1 + p * PG), 1, p, k + 1);
    }
    /* One page written by the kernel, not by an instruction of ours. */
    static uint64_t buf[PG / 8];
    fill(buf, 1, r1_kernel(k), k + 1);
    int fds[2];
    if (pipe(fds) != 0) DIE_ERRNO("pipe");
    write_all(fds[1], buf, PG, "pipe");
    if (read(fds[0], R1 + r1_kernel(k) * PG, PG) != (ssize_t)PG) DIE_ERRNO("read into R1");
    close(fds[0]);
    close(fds[1]);
    if (k == 3 && mprotect(R1 + 4000 * PG, 100 * PG, PROT_READ) != 0) DIE_ERRNO("mprotect");
}

int main(int argc, char **argv)
{
    static const char *const keys[] = {"pages", NULL};
    target_init(argc, argv, keys);
    g_seed = fresh_seed();
    if (mmap(R1, R1_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != R1) DIE_ERRNO("mmap R1");
    for (long p = 0; p < R1_PAGES; p++) fill((uint64_t *)(R1 + p * PG), 1, p, 1);
    announce_ready();
    for (;;) {
        char name[32];
        snprintf(name, sizeof name, "go-%d", g_phase + 1);
        if (access(wpath(name), F_OK) == 0) {
            verify_all(g_phase, "pages");
            int k = ++g_phase;
            if (!g_failed) run_phase(k);
            snprintf(name, sizeof name, "done-%d", k);
            if (g_failed) write_filef(name, "FAIL %s\n", g_fail_msg);
            else write_filef(name, "ok\n");
            if (g_failed) return 1;
            continue;
        }
        if (access(g_go_path, F_OK) == 0) break;
        sleep_ms(10);
    }
    mark_resumed();
    if (sabotage("pages")) R2[5 * PG + 17] ^= 1;
    verify_all(g_phase, "pages");
    return finish();
}
