/*
 * fd_locks: locks held through open files.
 *   10 W/a, O_RDWR: flock LOCK_EX;
 *   11 W/b, O_RDWR: POSIX read lock on bytes 10-19, write lock from 100 to EOF;
 *   12 W/c, O_RDWR: OFD write lock on bytes 0-4095;
 *   13 W/d (deleted while open): flock LOCK_SH.
 * After go: each fd's fdinfo lists the same locks (type, range, this pid; the
 * inode may differ for the deleted file, which comes back as a new one),
 * and they hold against others: a new open of W/a cannot flock it, one of
 * W/c cannot take an OFD lock on byte 0, a child process cannot take a POSIX
 * write lock on W/b byte 15.
 */
#define TARGET_NAME "fd_locks"
#include "fd_common.h"
#include <sys/file.h>
#include <sys/wait.h>

static const char *const KEYS[] = {"flock", "posix", "ofd", "deleted", NULL};

static int cmp_str(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* The fdinfo lock lines of fd without their index, sorted, joined by " | ". */
static void locks_of(int fd, char *out, size_t cap)
{
    char buf[8192], items[16][160];
    int n = 0;
    fdinfo(fd, buf, sizeof buf);
    for (char *l = buf; *l && n < 16;) {
        char *nl = strchr(l, '\n');
        char type[16], mode[16], acc[16], dev[64], start[32], end[32];
        int pid;
        /* "lock:\t1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 10 14": all but the index and the inode
           (a deleted file comes back as a new inode). */
        if (strncmp(l, "lock:", 5) == 0 && sscanf(l, "lock: %*d: %15s %15s %15s %d %63s %31s %31s", type, mode, acc, &pid, dev, start, end) == 7)
            snprintf(items[n++], sizeof items[0], "%s %s %s %d %s-%s", type, mode, acc, pid, start, end);
        if (!nl) break;
        l = nl + 1;
    }
    qsort(items, (size_t)n, sizeof items[0], cmp_str);
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) used += (size_t)snprintf(out + used, cap - used, "%s | ", items[i]);
}

static void lk(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock f = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &f) != 0) DIE_ERRNO("fcntl lock");
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    put_at(open(wpath("a"), O_RDWR | O_CREAT, 0600), 10, 0);
    put_at(open(wpath("b"), O_RDWR | O_CREAT, 0600), 11, 0);
    put_at(open(wpath("c"), O_RDWR | O_CREAT, 0600), 12, 0);
    put_at(open(wpath("d"), O_RDWR | O_CREAT, 0600), 13, 0);
    if (flock(10, LOCK_EX) != 0) DIE_ERRNO("flock");
    lk(11, F_SETLK, F_RDLCK, 10, 10);
    lk(11, F_SETLK, F_WRLCK, 100, 0);
    lk(12, F_OFD_SETLK, F_WRLCK, 0, 4096);
    if (flock(13, LOCK_SH) != 0) DIE_ERRNO("flock");
    unlink(wpath("d"));
    char before[4][1024];
    for (int i = 0; i < 4; i++) locks_of(10 + i, before[i], sizeof before[i]);
    announce_ready();
    wait_go(NULL);

    if (sabotage("flock")) flock(10, LOCK_UN);
    if (sabotage("posix")) lk(11, F_SETLK, F_UNLCK, 100, 0);
    if (sabotage("ofd")) lk(12, F_OFD_SETLK, F_UNLCK, 0, 0);
    if (sabotage("deleted")) flock(13, LOCK_UN);

    const char *key[4] = {"flock", "posix", "ofd", "deleted"};
    for (int i = 0; i < 4; i++) {
        char now[1024];
        locks_of(10 + i, now, sizeof now);
        CHECK(key[i], strcmp(now, before[i]) == 0 && before[i][0], "fd %d locks were '%s', now '%s'", 10 + i, before[i], now);
    }
    int a2 = open(wpath("a"), O_RDWR);
    CHECK("flock", flock(a2, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK, "W/a could be flocked through another open");
    int c2 = open(wpath("c"), O_RDWR);
    struct flock f = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    CHECK("ofd", fcntl(c2, F_OFD_SETLK, &f) != 0 && (errno == EAGAIN || errno == EACCES), "W/c byte 0 could be OFD-locked through another open");
    pid_t child = fork();
    if (child == 0) {
        int b2 = open(wpath("b"), O_RDWR);
        struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 15, .l_len = 1};
        _exit(fcntl(b2, F_SETLK, &w) == 0 ? 1 : 0);
    }
    int st = -1;
    waitpid(child, &st, 0);
    CHECK("posix", WIFEXITED(st) && WEXITSTATUS(st) == 0, "a child could take a write lock on W/b byte 15 (status %#x)", st);
    return finish();
}
