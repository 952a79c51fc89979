/*
 * shm_anon: MAP_SHARED|MAP_ANONYMOUS memory shared by a process tree.
 *   A, 8 MiB, mapped before the children are forked:
 *     [0, 1 MiB)   written by the parent (pattern 1);
 *     [1, 2 MiB)   written by the child, never touched by the parent (pattern 2);
 *     [2, 3 MiB)   written by a second child that exits before ready (pattern 3):
 *                  those pages are in no process's page tables any more;
 *     [4 MiB ...)  slots for the handshakes after restore.
 *   The parent also maps A a second time (mremap with old size 0): an alias
 *   of the same pages at another address.
 * After go: both processes see patterns 1 and 2, the parent pattern 3; a
 * token the parent writes reaches the child and its answer comes back; what
 * the child writes after go (pattern 4) reaches the parent; a write through
 * A shows through the alias; the child exits 0.
 */
#define _GNU_SOURCE
#define TARGET_NAME "shm_anon"
#include "shm_common.h"

static const char *const KEYS[] = {"before", "exited", "share", "after", "alias", "child", NULL};

#define MIB (1024UL * 1024UL)
#define SIZE (8 * MIB)

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_seed = fresh_seed();
    unsigned char *a = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) DIE_ERRNO("mmap shared anonymous");
    volatile uint64_t *slot = (volatile uint64_t *)(a + 4 * MIB);
    shm_fill(a, 0, MIB, 1);

    pid_t gone = fork();
    if (gone < 0) DIE_ERRNO("fork");
    if (gone == 0) {
        shm_fill(a + 2 * MIB, 2 * MIB, MIB, 3);
        _exit(0);
    }
    if (reap(gone) != 0) die("the short-lived child failed");

    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) {
        shm_fill(a + MIB, MIB, MIB, 2);
        slot[8] = 1; /* written: the parent may announce ready */
        child_wait_go();
        int rc = 0;
        if (shm_diff(a, 0, MIB, 1) >= 0 || shm_diff(a + MIB, MIB, MIB, 2) >= 0) rc |= 1;
        if (shm_answer(slot, 0x5eed) != 0) rc |= 2;
        shm_fill(a + 5 * MIB, 5 * MIB, MIB / 4, 4);
        __atomic_store_n(&slot[9], 1, __ATOMIC_RELEASE);
        shm_wait(&slot[10], 1); /* the parent says when to end */
        _exit(rc);
    }
    if (!shm_wait(&slot[8], 1)) die("the child did not write its part");
    unsigned char *alias = mremap(a, 0, SIZE, MREMAP_MAYMOVE);
    if (alias == MAP_FAILED) DIE_ERRNO("mremap (alias)");
    write_filef("child", "%d\n", (int)child);
    announce_ready();
    wait_go(NULL);

    if (sabotage("before")) a[12345] ^= 0xff;
    if (sabotage("exited")) a[2 * MIB + 777] ^= 0xff;
    long d;
    CHECK("before", (d = shm_diff(a, 0, MIB, 1)) < 0, "the parent's own pages differ at %ld", d);
    CHECK("before", (d = shm_diff(a + MIB, MIB, MIB, 2)) < 0, "the pages the child wrote differ at offset %ld (in the parent)", d);
    CHECK("exited", (d = shm_diff(a + 2 * MIB, 2 * MIB, MIB, 3)) < 0, "the pages written by a child that had exited differ at offset %ld", d);

    static uint64_t private_slot[2];
    int asked = shm_ask(sabotage("share") ? private_slot : slot, 0x5eed);
    CHECK("share", asked, "the child did not answer through the shared memory");
    int after = shm_wait(&slot[9], 1);
    if (sabotage("after")) a[5 * MIB + 99] ^= 0xff;
    CHECK("after", after && (d = shm_diff(a + 5 * MIB, 5 * MIB, MIB / 4, 4)) < 0, "what the child wrote after go did not reach the parent (%s)",
          after ? "pattern differs" : "no signal");

    if (sabotage("alias") && mmap(alias + 6 * MIB, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        DIE_ERRNO("sabotage alias");
    a[6 * MIB] = 0x42;
    CHECK("alias", alias[6 * MIB] == 0x42 && shm_diff(alias, 0, MIB, 1) < 0, "the second mapping of the same pages does not show them");

    if (sabotage("child")) kill(child, SIGKILL);
    slot[10] = 1;
    int rc = reap(child);
    CHECK("child", rc == 0, "child %d ended with %d (1: old contents differ, 2: no token from the parent)", (int)child, rc);
    return finish();
}
