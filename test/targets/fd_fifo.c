/*
 * fd_fifo: FIFOs (named pipes) in W.
 *   10 W/fifo O_RDONLY|O_NONBLOCK, 11 W/fifo O_WRONLY (close-on-exec), "fifo bytes 12345\n" buffered;
 *   12 W/fifo2 O_RDWR, 3000 bytes of a pattern buffered.
 * With the argument "outside": 13 W/outfifo O_WRONLY, whose reader is a
 * process outside the job (the test): a checkpoint must refuse it.
 * After go: the FIFOs are the ones at their paths, with their bytes, flags and
 * close-on-exec; 11 still writes to what 10 reads; 13 (outside) still writes.
 */
#define TARGET_NAME "fd_fifo"
#include "fd_common.h"
#include <signal.h>
#include <sys/ioctl.h>

static const char *const KEYS[] = {"data", "identity", "flags", "pair", NULL};

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    int outside = argc > 2 && strcmp(argv[2], "outside") == 0;
    signal(SIGPIPE, SIG_IGN);
    if (mkfifo(wpath("fifo"), 0600) != 0) DIE_ERRNO("mkfifo");
    if (mkfifo(wpath("fifo2"), 0600) != 0) DIE_ERRNO("mkfifo");
    put_at(open(wpath("fifo"), O_RDONLY | O_NONBLOCK), 10, 0);
    put_at(open(wpath("fifo"), O_WRONLY), 11, 1);
    write_all(11, "fifo bytes 12345\n", 17, "fifo");
    put_at(open(wpath("fifo2"), O_RDWR), 12, 0);
    unsigned char pat[3000];
    uint64_t s = fresh_seed();
    for (int i = 0; i < 3000; i++) pat[i] = (unsigned char)(xorshift64(&s) >> 56);
    write_all(12, pat, sizeof pat, "fifo2");
    if (outside) put_at(open(wpath("outfifo"), O_WRONLY | O_NONBLOCK), 13, 0);
    struct stat st0;
    stat(wpath("fifo"), &st0);
    announce_ready();
    wait_go(NULL);

    if (sabotage("data")) { char x; read(12, &x, 1); }
    if (sabotage("identity")) { mkfifo(wpath("other"), 0600); dup2(open(wpath("other"), O_RDONLY | O_NONBLOCK), 10); }
    if (sabotage("flags")) fcntl(11, F_SETFD, 0);
    if (sabotage("pair")) { int p[2]; pipe(p); dup2(p[1], 11); }

    struct stat st, sp;
    fstat(10, &st);
    stat(wpath("fifo"), &sp);
    CHECK("identity", S_ISFIFO(st.st_mode) && st.st_ino == sp.st_ino && st.st_dev == sp.st_dev && sp.st_ino == st0.st_ino,
          "fd 10 is inode %lu, W/fifo %lu (was %lu)", (unsigned long)st.st_ino, (unsigned long)sp.st_ino, (unsigned long)st0.st_ino);
    CHECK("flags", status_flags(10) == (O_RDONLY | O_NONBLOCK) && status_flags(11) == O_WRONLY && status_flags(12) == O_RDWR &&
                       is_cloexec(11) == 1 && is_cloexec(10) == 0,
          "flags 10: 0%o 11: 0%o 12: 0%o, close-on-exec 10 %d 11 %d", status_flags(10), status_flags(11), status_flags(12), is_cloexec(10),
          is_cloexec(11));
    int n10 = -1, n12 = -1;
    ioctl(10, FIONREAD, &n10);
    ioctl(12, FIONREAD, &n12);
    char b[32] = {0};
    unsigned char in[3000];
    ssize_t r10 = read(10, b, sizeof b);
    ssize_t r12 = read(12, in, sizeof in);
    CHECK("data", n10 == 17 && r10 == 17 && memcmp(b, "fifo bytes 12345\n", 17) == 0, "W/fifo held %d bytes, read %zd: '%s'", n10, r10, b);
    CHECK("data", n12 == 3000 && r12 == 3000 && memcmp(in, pat, 3000) == 0, "W/fifo2 held %d bytes, read %zd", n12, r12);
    memset(b, 0, sizeof b);
    int ok = write(11, "again", 5) == 5 && read(10, b, sizeof b) == 5 && memcmp(b, "again", 5) == 0;
    CHECK("pair", ok, "fd 11 no longer writes into what fd 10 reads");
    if (outside) CHECK("pair", write(13, "x", 1) == 1, "W/outfifo: %s", strerror(errno));
    return finish();
}
