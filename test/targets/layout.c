/*
 * layout: an address-space layout with holes, inside one PROT_NONE reservation R
 * (page numbers relative to R):
 *   [2, 18)   read-write region A, with [7, 9) mprotect'ed PROT_NONE (a hole);
 *   [20, 29)  a read-write region whose first page is a PROT_NONE guard page;
 *   [31, 32)  a PROT_READ page with known content;
 *   [40, 40 + 1 GiB) MAP_NORESERVE anonymous read-write, 10 pages touched;
 *   the rest of R stays PROT_NONE.
 * After go: the /proc/self/maps lines overlapping R are identical to
 * W/maps.before; contents are right; the hole and guard pages fault on
 * access and the read-only page on write; the untouched pages of the 1 GiB
 * region read zero and were not made resident; it is still MAP_NORESERVE.
 */
#define TARGET_NAME "layout"
#include "common.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>

static const char *const KEYS[] = {"maps", "region", "hole", "guard", "ro_content", "ro_writable", "big_touched",
                                   "big_zero", "sparse", "noreserve", NULL};

#define PG 4096UL
#define A_OFF 2
#define A_PAGES 16
#define HOLE_OFF 7
#define HOLE_PAGES 2
#define G_OFF 20
#define G_PAGES 9
#define RO_OFF 31
#define BIG_OFF 40
#define BIG_PAGES (1UL << 18) /* 1 GiB */
#define TOTAL_PAGES (BIG_OFF + BIG_PAGES + 3)
#define NTOUCH 10

static char *R;
static uint64_t seed;

static size_t touched(int k)
{
    return k == NTOUCH - 1 ? BIG_PAGES - 1 : (size_t)k * 29011 + 3;
}

static uint64_t pat(size_t page, size_t word)
{
    uint64_t z = seed ^ ((uint64_t)page << 24) ^ (uint64_t)word;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static char *pg(size_t n) { return R + n * PG; }

static void fill(size_t n)
{
    uint64_t *w = (uint64_t *)pg(n);
    for (size_t i = 0; i < PG / 8; i++) w[i] = pat(n, i);
}

static int matches(size_t n)
{
    const uint64_t *w = (const uint64_t *)pg(n);
    for (size_t i = 0; i < PG / 8; i++)
        if (w[i] != pat(n, i)) return 0;
    return 1;
}

static void map_fixed(size_t off, size_t pages, int prot, int extra)
{
    if (mmap(pg(off), pages * PG, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | extra, -1, 0) == MAP_FAILED)
        DIE_ERRNO("mmap MAP_FIXED");
}

static void protect(size_t off, size_t pages, int prot)
{
    if (mprotect(pg(off), pages * PG, prot) != 0) DIE_ERRNO("mprotect");
}

/* Fault probes. */
static sigjmp_buf probe_env;
static void on_segv(int sig)
{
    (void)sig;
    siglongjmp(probe_env, 1);
}
static int can_read(const void *p)
{
    if (sigsetjmp(probe_env, 1)) return 0;
    (void)*(const volatile char *)p;
    return 1;
}
static int can_write(void *p)
{
    if (sigsetjmp(probe_env, 1)) return 0;
    volatile char *c = p;
    char v = *c;
    *c = v;
    return 1;
}

/* The smaps block of the mapping starting at `start`: Rss in kB and whether VmFlags has "nr". */
static void smaps_of(uintptr_t start, long *rss_kb, int *noreserve)
{
    *rss_kb = -1;
    *noreserve = -1;
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f) DIE_ERRNO("/proc/self/smaps");
    char line[1024];
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char c;
        if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3) {
            in = s == start;
            continue;
        }
        if (!in) continue;
        if (strncmp(line, "Rss:", 4) == 0) *rss_kb = atol(line + 4);
        if (strncmp(line, "VmFlags:", 8) == 0) *noreserve = strstr(line, " nr") != NULL;
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    seed = fresh_seed();

    R = mmap(NULL, TOTAL_PAGES * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (R == MAP_FAILED) DIE_ERRNO("mmap reservation");

    map_fixed(A_OFF, A_PAGES, PROT_READ | PROT_WRITE, 0);
    for (size_t n = A_OFF; n < A_OFF + A_PAGES; n++) fill(n);
    protect(HOLE_OFF, HOLE_PAGES, PROT_NONE);

    map_fixed(G_OFF, G_PAGES, PROT_READ | PROT_WRITE, 0);
    for (size_t n = G_OFF + 1; n < G_OFF + G_PAGES; n++) fill(n);
    protect(G_OFF, 1, PROT_NONE);

    map_fixed(RO_OFF, 1, PROT_READ | PROT_WRITE, 0);
    fill(RO_OFF);
    protect(RO_OFF, 1, PROT_READ);

    map_fixed(BIG_OFF, BIG_PAGES, PROT_READ | PROT_WRITE, MAP_NORESERVE);
    for (int k = 0; k < NTOUCH; k++) fill(BIG_OFF + touched(k));

    long rss_before;
    int nr_before;
    smaps_of((uintptr_t)pg(BIG_OFF), &rss_before, &nr_before);
    if (rss_before < 0 || nr_before != 1) die("cannot find the 1 GiB mapping in smaps");

    static char before[16384];
    maps_lines_overlapping((uintptr_t)R, (uintptr_t)pg(TOTAL_PAGES), before, sizeof before);
    write_file("maps.before", before, strlen(before));
    write_filef("rss.before", "%ld\n", rss_before);

    announce_ready();
    wait_go(NULL);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_segv;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);

    if (sabotage("maps") && munmap(pg(TOTAL_PAGES - 1), PG) != 0) DIE_ERRNO("munmap");
    if (sabotage("region")) pg(A_OFF + 3)[5] ^= 1;
    if (sabotage("hole")) protect(HOLE_OFF, 1, PROT_READ);
    if (sabotage("guard")) protect(G_OFF, 1, PROT_READ);
    if (sabotage("ro_content")) {
        protect(RO_OFF, 1, PROT_READ | PROT_WRITE);
        pg(RO_OFF)[77] ^= 1;
        protect(RO_OFF, 1, PROT_READ);
    }
    if (sabotage("ro_writable")) protect(RO_OFF, 1, PROT_READ | PROT_WRITE);
    if (sabotage("big_touched")) pg(BIG_OFF + touched(4))[999] ^= 1;
    if (sabotage("big_zero")) pg(BIG_OFF + 100000)[17] = 1;
    if (sabotage("sparse"))
        for (size_t n = 0; n < 2048; n++) *(volatile char *)pg(BIG_OFF + 150000 + n) = 0;
    if (sabotage("noreserve")) {
        /* The same range again, without MAP_NORESERVE, same content. */
        map_fixed(BIG_OFF, BIG_PAGES, PROT_READ | PROT_WRITE, 0);
        for (int k = 0; k < NTOUCH; k++) fill(BIG_OFF + touched(k));
    }

    static char after[16384];
    maps_lines_overlapping((uintptr_t)R, (uintptr_t)pg(TOTAL_PAGES), after, sizeof after);
    static char saved[16384];
    read_file("maps.before", saved, sizeof saved);
    CHECK("maps", strcmp(after, before) == 0 && strcmp(saved, before) == 0,
          "maps lines in the reservation differ: before [%s] now [%s]", oneline(before), oneline(after));

    for (size_t n = A_OFF; n < A_OFF + A_PAGES; n++) {
        if (n >= HOLE_OFF && n < HOLE_OFF + HOLE_PAGES) {
            CHECK("hole", !can_read(pg(n)), "hole page %zu is readable", n);
        } else {
            CHECK("region", can_read(pg(n)) && matches(n), "region page %zu lost its content", n);
        }
    }
    CHECK("guard", !can_read(pg(G_OFF)), "guard page is readable");
    for (size_t n = G_OFF + 1; n < G_OFF + G_PAGES; n++)
        CHECK("guard", can_read(pg(n)) && matches(n), "page %zu above the guard lost its content", n);
    CHECK("ro_content", can_read(pg(RO_OFF)) && matches(RO_OFF), "read-only page lost its content");
    CHECK("ro_writable", !can_write(pg(RO_OFF)), "read-only page is writable");

    long rss_after;
    int nr_after;
    smaps_of((uintptr_t)pg(BIG_OFF), &rss_after, &nr_after);
    long rss_file = read_ll("rss.before", -1);
    CHECK("sparse", rss_after >= 0 && rss_after <= rss_before + 4096 && rss_file == rss_before,
          "1 GiB region has %ld kB resident, %ld kB before the checkpoint", rss_after, rss_before);
    CHECK("noreserve", nr_after == 1, "1 GiB region lost MAP_NORESERVE (VmFlags nr)");

    for (int k = 0; k < NTOUCH; k++)
        CHECK("big_touched", matches(BIG_OFF + touched(k)), "touched page %zu of the 1 GiB region lost its content",
              touched(k));
    size_t nonzero = 0, first = 0;
    int k = 0;
    for (size_t n = 0; n < BIG_PAGES; n++) {
        if (k < NTOUCH && n == touched(k)) {
            k++;
            continue;
        }
        const uint64_t *w = (const uint64_t *)pg(BIG_OFF + n);
        uint64_t acc = 0;
        for (size_t i = 0; i < PG / 8; i++) acc |= w[i];
        if (acc && nonzero++ == 0) first = n;
    }
    CHECK("big_zero", nonzero == 0, "%zu untouched pages of the 1 GiB region are not zero, first page %zu", nonzero,
          first);

    return finish();
}
