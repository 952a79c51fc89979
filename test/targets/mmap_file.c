/*
 * mmap_file: file mappings.
 *   W/priv.dat   (8 pages) mapped MAP_PRIVATE read-write: pages 1, 3, 5
 *                written through the mapping (copy-on-write, so they differ
 *                from the file), pages 0 and 2 only read, 4, 6, 7 never touched.
 *   W/shared.dat (6 pages) mapped MAP_SHARED read-write, every page written
 *                through the mapping (so the file holds what was written).
 * After go: written private pages hold what was written and the file still
 * holds its original content there; the other private pages equal the file;
 * the shared mapping equals the file and the written pattern; a new write
 * through the shared mapping reaches the file (pread on a new fd); the maps
 * lines of both mappings are as before (W/maps.before).
 */
#define TARGET_NAME "mmap_file"
#include "common.h"
#include <sys/mman.h>

static const char *const KEYS[] = {"private_written", "private_untouched", "private_file", "shared",
                                   "shared_write", "maps", NULL};

#define PG 4096
#define PRIV_PAGES 8
#define SHARED_PAGES 6
/* The last shared page is the one the post-go write goes to: not checked against the pattern. */
#define SHARED_CHECKED (SHARED_PAGES - 1)

enum { TAG_FILE = 1, TAG_COW = 2, TAG_SHARED = 3, TAG_NEW = 4 };

static uint64_t seed;

static uint64_t pat(int tag, int page, size_t word)
{
    uint64_t z = seed ^ ((uint64_t)tag << 56) ^ ((uint64_t)page << 40) ^ (uint64_t)word;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill(void *page, int tag, int pageno)
{
    uint64_t *w = page;
    for (size_t i = 0; i < PG / 8; i++) w[i] = pat(tag, pageno, i);
}

static int matches(const void *page, int tag, int pageno)
{
    const uint64_t *w = page;
    for (size_t i = 0; i < PG / 8; i++)
        if (w[i] != pat(tag, pageno, i)) return 0;
    return 1;
}

static void make_file(const char *name, int pages, int tag)
{
    static uint64_t page[PG / 8];
    int fd = open(wpath(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) DIE_ERRNO(name);
    for (int p = 0; p < pages; p++) {
        fill(page, tag, p);
        write_all(fd, page, PG, name);
    }
    close(fd);
}

static char *map_file(const char *name, int pages, int flags)
{
    int fd = open(wpath(name), O_RDWR | O_CLOEXEC);
    if (fd < 0) DIE_ERRNO(name);
    char *m = mmap(NULL, (size_t)pages * PG, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (m == MAP_FAILED) DIE_ERRNO("mmap");
    close(fd);
    return m;
}

static int is_written(int p) { return p == 1 || p == 3 || p == 5; }

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    seed = fresh_seed();

    make_file("priv.dat", PRIV_PAGES, TAG_FILE);
    make_file("shared.dat", SHARED_PAGES, TAG_FILE);
    char *priv = map_file("priv.dat", PRIV_PAGES, MAP_PRIVATE);
    char *shared = map_file("shared.dat", SHARED_PAGES, MAP_SHARED);

    volatile uint64_t sink = 0;
    for (int p = 0; p < PRIV_PAGES; p++) {
        if (is_written(p)) fill(priv + p * PG, TAG_COW, p);
        else if (p == 0 || p == 2) sink += *(volatile uint64_t *)(priv + p * PG + 8 * p);
    }
    (void)sink;
    for (int p = 0; p < SHARED_PAGES; p++) fill(shared + p * PG, TAG_SHARED, p);

    char before[4096];
    int nb = maps_lines_overlapping((uintptr_t)priv, (uintptr_t)priv + PRIV_PAGES * PG, before, sizeof before);
    nb += maps_lines_overlapping((uintptr_t)shared, (uintptr_t)shared + SHARED_PAGES * PG, before + strlen(before),
                                 sizeof before - strlen(before));
    if (nb != 2) die("expected 2 maps lines for the two mappings, found %d:\n%s", nb, before);
    write_file("maps.before", before, strlen(before));

    announce_ready();
    wait_go(NULL);

    int fdp = open(wpath("priv.dat"), O_RDONLY | O_CLOEXEC);
    int fds = open(wpath("shared.dat"), O_RDWR | O_CLOEXEC);
    if (fdp < 0 || fds < 0) DIE_ERRNO("reopen");

    if (sabotage("private_written")) priv[3 * PG + 100] ^= 1;
    if (sabotage("private_untouched")) priv[6 * PG + 200] ^= 1;
    if (sabotage("private_file")) {
        /* flip a byte: a fixed one would match the random pattern 1 time in 256 */
        char x = 0;
        int w = open(wpath("priv.dat"), O_RDWR | O_CLOEXEC);
        if (w < 0 || pread(w, &x, 1, 1 * PG + 300) != 1) DIE_ERRNO("sabotage pread");
        x ^= 0x5a;
        if (pwrite(w, &x, 1, 1 * PG + 300) != 1) DIE_ERRNO("sabotage pwrite");
        close(w);
    }
    if (sabotage("shared")) shared[2 * PG + 400] ^= 1;

    static uint64_t page[PG / 8];
    for (int p = 0; p < PRIV_PAGES; p++) {
        if (pread(fdp, page, PG, (off_t)p * PG) != PG) DIE_ERRNO("pread priv.dat");
        int file_ok = matches(page, TAG_FILE, p);
        if (is_written(p)) {
            CHECK("private_written", matches(priv + p * PG, TAG_COW, p),
                  "private page %d lost the content written before the checkpoint", p);
            CHECK("private_file", file_ok, "priv.dat page %d no longer holds its original content", p);
            CHECK("private_written", memcmp(priv + p * PG, page, PG) != 0,
                  "private page %d (copy-on-write) equals the file again", p);
        } else {
            CHECK("private_untouched", memcmp(priv + p * PG, page, PG) == 0,
                  "untouched private page %d differs from the file", p);
            CHECK("private_untouched", matches(priv + p * PG, TAG_FILE, p),
                  "untouched private page %d differs from the original file content", p);
            CHECK("private_file", file_ok, "priv.dat page %d no longer holds its original content", p);
        }
    }
    for (int p = 0; p < SHARED_CHECKED; p++) {
        if (pread(fds, page, PG, (off_t)p * PG) != PG) DIE_ERRNO("pread shared.dat");
        CHECK("shared", memcmp(shared + p * PG, page, PG) == 0, "shared page %d differs from shared.dat", p);
        CHECK("shared", matches(shared + p * PG, TAG_SHARED, p),
              "shared page %d lost the content written through the mapping", p);
    }
    /* A new write through the shared mapping must reach the file. */
    {
        const int p = SHARED_PAGES - 1;
        static char scratch[PG];
        char *dst = sabotage("shared_write") ? scratch : shared + p * PG;
        uint64_t old_seed = seed;
        seed = fresh_seed() ^ 0x1234;
        fill(dst, TAG_NEW, p);
        if (pread(fds, page, PG, (off_t)p * PG) != PG) DIE_ERRNO("pread shared.dat");
        CHECK("shared_write", matches(page, TAG_NEW, p),
              "a write through the shared mapping after restore did not reach shared.dat");
        seed = old_seed;
    }

    if (sabotage("maps")) {
        if (mprotect(priv, PRIV_PAGES * PG, PROT_READ) != 0) DIE_ERRNO("mprotect");
    }
    char after[4096];
    maps_lines_overlapping((uintptr_t)priv, (uintptr_t)priv + PRIV_PAGES * PG, after, sizeof after);
    maps_lines_overlapping((uintptr_t)shared, (uintptr_t)shared + SHARED_PAGES * PG, after + strlen(after),
                           sizeof after - strlen(after));
    char saved[4096];
    read_file("maps.before", saved, sizeof saved);
    CHECK("maps", strcmp(after, before) == 0 && strcmp(saved, before) == 0, "maps lines differ: before [%s] now [%s]",
          oneline(before), oneline(after));

    close(fdp);
    close(fds);
    return finish();
}
