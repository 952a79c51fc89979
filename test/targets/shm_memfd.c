/*
 * shm_memfd: memfds mapped by a process tree.
 *   m1 "crest-shm": 2 MiB + 100 bytes of pattern 1, written through its fd
 *      (kept open at fd 10) and never touched through a mapping before the
 *      checkpoint; the parent maps [0, 1 MiB) of it shared, the child
 *      [1 MiB, 2 MiB + 8 KiB): a mapping that reaches past the end of the
 *      memfd (its last page cannot be touched).
 *   m2 "crest-closed": 1 MiB, mapped shared before the fork, its fd closed:
 *      only the two mappings hold it.
 *   m3 "crest-private": 3 pages of pattern 5 mapped privately by the parent,
 *      its fd closed; the parent wrote page 0 (pattern 6: its own copy).
 * After go: both see m1's bytes through their mappings; a token the parent
 * writes through fd 10 shows in the child's mapping (fd and mappings are one
 * memfd); the child answers through m2; m1 keeps its exact size; m3's page 0
 * is the parent's copy, pages 1-2 the memfd's; /proc/self/maps names them
 * as before; the child exits 0.
 */
#define _GNU_SOURCE
#define TARGET_NAME "shm_memfd"
#include "shm_common.h"
#include "fd_common.h"

static const char *const KEYS[] = {"contents", "fd", "closed", "size", "private", "names", "child", NULL};

#define MIB (1024UL * 1024UL)
#define M1_SIZE (2 * MIB + 100)
#define PAGE 4096UL

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_seed = fresh_seed();
    int m1 = memfd_create("crest-shm", MFD_CLOEXEC);
    if (m1 < 0) DIE_ERRNO("memfd_create");
    unsigned char *buf = malloc(M1_SIZE);
    shm_fill(buf, 0, M1_SIZE, 1);
    write_all(m1, buf, M1_SIZE, "m1");
    free(buf);
    m1 = put_at(m1, 10, 1);
    unsigned char *p1 = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, m1, 0);
    if (p1 == MAP_FAILED) DIE_ERRNO("mmap m1");

    int m2 = memfd_create("crest-closed", MFD_CLOEXEC);
    if (m2 < 0 || ftruncate(m2, MIB) != 0) DIE_ERRNO("m2");
    volatile uint64_t *slot = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, m2, 0);
    if ((void *)slot == MAP_FAILED) DIE_ERRNO("mmap m2");
    close(m2);

    int m3 = memfd_create("crest-private", MFD_CLOEXEC);
    if (m3 < 0) DIE_ERRNO("m3");
    unsigned char three[3 * PAGE];
    shm_fill(three, 0, sizeof three, 5);
    write_all(m3, three, sizeof three, "m3");
    unsigned char *p3 = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, m3, 0);
    if (p3 == MAP_FAILED) DIE_ERRNO("mmap m3");
    close(m3);
    shm_fill(p3, 0, PAGE, 6);

    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) {
        unsigned char *c1 = mmap(NULL, MIB + 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, m1, MIB);
        if (c1 == MAP_FAILED) _exit(9);
        close(m1); /* only the parent keeps an fd of m1 */
        slot[8] = 1;
        child_wait_go();
        int rc = 0;
        if (shm_diff(c1, MIB, MIB + 100, 1) >= 0) rc |= 1;
        for (size_t i = MIB + 100; i < MIB + PAGE; i++)
            if (c1[i] != 0) rc |= 1;
        slot[5] = 1; /* checked: the parent may write into m1 now */
        /* The token comes through the parent's fd into this mapping; the answer goes back through m2. */
        if (!shm_wait((volatile uint64_t *)(c1 + 16), 0xfeed)) rc |= 2;
        else slot[1] = 0xfeed + 1;
        if (shm_answer(slot + 2, 0xc105ed) != 0) rc |= 4;
        shm_wait(&slot[10], 1); /* the parent says when to end */
        _exit(rc);
    }
    if (!shm_wait(&slot[8], 1)) die("the child did not map m1");
    write_filef("child", "%d\n", (int)child);
    announce_ready();
    wait_go(NULL);

    long d;
    if (sabotage("contents")) p1[4321] ^= 0xff;
    CHECK("contents", (d = shm_diff(p1, 0, MIB, 1)) < 0, "m1 differs at %ld in the parent's mapping", d);
    uint64_t token = 0xfeed;
    if (sabotage("fd")) token = 0xdead;
    shm_wait(&slot[5], 1);
    if (pwrite(10, &token, sizeof token, MIB + 16) != (ssize_t)sizeof token) DIE_ERRNO("pwrite m1");
    CHECK("fd", shm_wait(&slot[1], 0xfeed + 1), "what was written through m1's fd did not reach the child's mapping");
    static uint64_t private_slot[2];
    CHECK("closed", shm_ask(sabotage("closed") ? private_slot : slot + 2, 0xc105ed), "the child did not answer through m2");
    struct stat st;
    if (sabotage("size")) ftruncate(10, M1_SIZE + 1);
    CHECK("size", fstat(10, &st) == 0 && st.st_size == (off_t)M1_SIZE, "m1 is %lld bytes, not %lu", (long long)st.st_size, M1_SIZE);
    if (sabotage("private")) p3[PAGE + 3] ^= 0xff;
    CHECK("private", shm_diff(p3, 0, PAGE, 6) < 0 && shm_diff(p3 + PAGE, PAGE, 2 * PAGE, 5) < 0,
          "the private mapping of m3 does not hold the parent's page 0 and the memfd's pages 1-2");
    char *maps = read_self_maps();
    int named = strstr(maps, "/memfd:crest-shm (deleted)") && strstr(maps, "/memfd:crest-closed (deleted)") && strstr(maps, "/memfd:crest-private (deleted)");
    free(maps);
    CHECK("names", named && !sabotage("names"), "/proc/self/maps does not name the three memfds");
    if (sabotage("child")) kill(child, SIGKILL);
    slot[10] = 1;
    int rc = reap(child);
    CHECK("child", rc == 0, "child %d ended with %d (1: m1 differs, 2: no token through the fd, 4: no token through m2)", (int)child, rc);
    return finish();
}
