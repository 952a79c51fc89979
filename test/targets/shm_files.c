/*
 * shm_files: files mapped shared by a process tree.
 *   named:    POSIX shared memory (shm_open "/crest-test-..."; the name is in
 *             W/shm-name): a file of /dev/shm, mapped shared before the fork;
 *   unlinked: POSIX shared memory mapped the same way, then shm_unlink'ed:
 *             only the two mappings hold it;
 *   deleted:  W/data, 1 MiB + 10 bytes of pattern 7, mapped shared (one page
 *             past its end) before the fork, then deleted; the parent keeps
 *             an fd of it (fd 11); nobody touched its pages through a mapping;
 *   private:  W/lib, 3 pages of pattern 8 mapped privately (as a library is),
 *             page 1 written by the parent (pattern 9), then deleted.
 * After go: a token goes both ways through each shared memory; the deleted
 * file's bytes show in the child's mapping, and a token written through fd
 * 11 reaches it; the private mapping holds pages 0, 2 of the file and the
 * parent's page 1; the child exits 0.
 */
#define _GNU_SOURCE
#define TARGET_NAME "shm_files"
#include "shm_common.h"
#include "fd_common.h"

static const char *const KEYS[] = {"named", "unlinked", "deleted", "deleted-fd", "private", "child", NULL};

#define MIB (1024UL * 1024UL)
#define PAGE 4096UL
#define DATA_SIZE (MIB + 10)

static volatile uint64_t *shm_map(const char *name, int unlink_it)
{
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) DIE_ERRNO(name);
    if (ftruncate(fd, MIB) != 0) DIE_ERRNO("ftruncate shm");
    void *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) DIE_ERRNO("mmap shm");
    close(fd);
    if (unlink_it && shm_unlink(name) != 0) DIE_ERRNO("shm_unlink");
    return p;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    g_seed = fresh_seed();
    char named_name[64], unlinked_name[64];
    snprintf(named_name, sizeof named_name, "/crest-test-%d-%08x", (int)getpid(), (unsigned)g_seed);
    snprintf(unlinked_name, sizeof unlinked_name, "/crest-test-%d-%08x-u", (int)getpid(), (unsigned)g_seed);
    write_filef("shm-name", "%s\n", named_name);
    volatile uint64_t *named = shm_map(named_name, 0);
    volatile uint64_t *unl = shm_map(unlinked_name, 1);

    unsigned char *buf = malloc(DATA_SIZE);
    shm_fill(buf, 0, DATA_SIZE, 7);
    int df = open(wpath("data"), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (df < 0) DIE_ERRNO("W/data");
    write_all(df, buf, DATA_SIZE, "W/data");
    free(buf);
    df = put_at(df, 11, 1);
    unsigned char *data = mmap(NULL, DATA_SIZE + PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, df, 0);
    if (data == MAP_FAILED) DIE_ERRNO("mmap W/data");
    if (unlink(wpath("data")) != 0) DIE_ERRNO("unlink W/data");

    unsigned char lib[3 * PAGE];
    shm_fill(lib, 0, sizeof lib, 8);
    int lf = open(wpath("lib"), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (lf < 0) DIE_ERRNO("W/lib");
    write_all(lf, lib, sizeof lib, "W/lib");
    unsigned char *priv = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, lf, 0);
    if (priv == MAP_FAILED) DIE_ERRNO("mmap W/lib");
    close(lf);
    shm_fill(priv + PAGE, PAGE, PAGE, 9);
    if (unlink(wpath("lib")) != 0) DIE_ERRNO("unlink W/lib");

    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) {
        close(11);
        unl[8] = 1;
        child_wait_go();
        int rc = 0;
        if (shm_answer(named, 0x1111) != 0) rc |= 1;
        if (shm_answer(unl, 0x2222) != 0) rc |= 2;
        if (shm_diff(data, 0, DATA_SIZE, 7) >= 0) rc |= 4;
        unl[5] = 1; /* checked: the parent may write into W/data now */
        if (!shm_wait((volatile uint64_t *)(data + 4096), 0x3333)) rc |= 8;
        else unl[3] = 0x3334;
        shm_wait(&unl[10], 1); /* the parent says when to end */
        _exit(rc);
    }
    if (!shm_wait(&unl[8], 1)) die("the child did not start");
    write_filef("child", "%d\n", (int)child);
    announce_ready();
    wait_go(NULL);

    static uint64_t private_slot[4];
    CHECK("named", shm_ask(sabotage("named") ? private_slot : named, 0x1111), "no answer through %s", named_name);
    CHECK("unlinked", shm_ask(sabotage("unlinked") ? private_slot : unl, 0x2222), "no answer through the unlinked shared memory");
    if (sabotage("deleted")) data[MIB + 3] ^= 0xff;
    long d;
    CHECK("deleted", (d = shm_diff(data, 0, DATA_SIZE, 7)) < 0, "W/data (deleted) differs at %ld in the parent's mapping", d);
    uint64_t token = sabotage("deleted-fd") ? 0xbad : 0x3333;
    shm_wait(&unl[5], 1);
    if (pwrite(11, &token, sizeof token, 4096) != (ssize_t)sizeof token) DIE_ERRNO("pwrite W/data");
    CHECK("deleted-fd", shm_wait(&unl[3], 0x3334), "what was written through the deleted file's fd did not reach the child's mapping");
    if (sabotage("private")) priv[2 * PAGE + 1] ^= 0xff;
    CHECK("private", shm_diff(priv, 0, PAGE, 8) < 0 && shm_diff(priv + PAGE, PAGE, PAGE, 9) < 0 && shm_diff(priv + 2 * PAGE, 2 * PAGE, PAGE, 8) < 0,
          "the private mapping of the deleted W/lib does not hold its pages and the parent's page 1");
    if (sabotage("child")) kill(child, SIGKILL);
    unl[10] = 1;
    int rc = reap(child);
    CHECK("child", rc == 0, "child %d ended with %d (1: named, 2: unlinked, 4: W/data differs, 8: no token through the fd)", (int)child, rc);
    shm_unlink(named_name);
    return finish();
}
