/*
 * fd_memfd: files that exist only while open.
 *   10 memfd "crest-buf" (sealable): 100000 bytes of a pattern, then grown to 200000
 *      (zeros), sealed F_SEAL_SHRINK|F_SEAL_GROW, offset 12345, close-on-exec;
 *   11 the same memfd opened again read-only through /proc/self/fd/10, offset 7;
 *   12 memfd "plain" (not sealable: F_SEAL_SEAL), "abc", O_APPEND;
 *   13 W/gone.txt (mode 0640, 5000 bytes of a pattern) deleted while open, offset 100;
 *   14 the same deleted file opened read-only before the unlink, offset 4000.
 * After go: names, contents, sizes, seals, modes, flags, offsets; 10/11 and
 * 13/14 share their inode but not their offsets; a write through 10 shows
 * through 11; the deleted file has no link.
 */
#define TARGET_NAME "fd_memfd"
#include "fd_common.h"
#include <sys/mman.h>

static const char *const KEYS[] = {"memfd", "seals", "shared", "flags", "offsets", "deleted", NULL};

static uint64_t seed;
static unsigned char pat(size_t i, int k)
{
    uint64_t z = seed ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL ^ (uint64_t)k << 56;
    z ^= z >> 29;
    return (unsigned char)(z * 0xbf58476d1ce4e5b9ULL >> 56);
}

static const char *link_of(int fd)
{
    static char out[512];
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(p, out, sizeof out - 1);
    out[n < 0 ? 0 : n] = 0;
    return out;
}

static int content_ok(int fd, size_t len, int k, size_t zeros_from)
{
    unsigned char *b = malloc(len);
    ssize_t n = pread(fd, b, len, 0);
    int ok = n == (ssize_t)len;
    for (size_t i = 0; ok && i < len; i++) ok = b[i] == (i < zeros_from ? pat(i, k) : 0);
    free(b);
    return ok;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    seed = fresh_seed();
    int m = memfd_create("crest-buf", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    unsigned char *b = malloc(100000);
    for (size_t i = 0; i < 100000; i++) b[i] = pat(i, 1);
    write_all(m, b, 100000, "memfd");
    if (ftruncate(m, 200000) != 0) DIE_ERRNO("ftruncate");
    if (fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) DIE_ERRNO("F_ADD_SEALS");
    put_at(m, 10, 1);
    lseek(10, 12345, SEEK_SET);
    put_at(open("/proc/self/fd/10", O_RDONLY), 11, 0);
    lseek(11, 7, SEEK_SET);
    int pl = memfd_create("plain", 0);
    write_all(pl, "abc", 3, "plain");
    put_at(pl, 12, 0);
    fcntl(12, F_SETFL, O_APPEND);
    mode_t um = umask(0);
    int g = open(wpath("gone.txt"), O_RDWR | O_CREAT | O_EXCL, 0640);
    umask(um);
    for (size_t i = 0; i < 5000; i++) b[i] = pat(i, 2);
    write_all(g, b, 5000, "gone.txt");
    put_at(g, 13, 0);
    lseek(13, 100, SEEK_SET);
    put_at(open(wpath("gone.txt"), O_RDONLY), 14, 0);
    lseek(14, 4000, SEEK_SET);
    if (unlink(wpath("gone.txt")) != 0) DIE_ERRNO("unlink");
    char gone_link[600];
    snprintf(gone_link, sizeof gone_link, "%s (deleted)", wpath("gone.txt"));
    announce_ready();
    wait_go(NULL);

    /* flip a byte: writing a fixed one would match the random pattern 1 time in 256 */
    if (sabotage("memfd")) { unsigned char z = pat(50, 1) ^ 0xff; pwrite(10, &z, 1, 50); }
    if (sabotage("seals")) fcntl(10, F_ADD_SEALS, F_SEAL_WRITE);
    if (sabotage("shared")) { int o = memfd_create("crest-buf", 0); dup2(o, 11); }
    if (sabotage("flags")) fcntl(12, F_SETFL, 0);
    if (sabotage("offsets")) lseek(11, 0, SEEK_SET);
    if (sabotage("deleted")) { unsigned char z = pat(10, 2) ^ 0xff; pwrite(13, &z, 1, 10); }

    struct stat s10, s11, s12, s13, s14;
    fstat(10, &s10), fstat(11, &s11), fstat(12, &s12), fstat(13, &s13), fstat(14, &s14);
    CHECK("memfd", strcmp(link_of(10), "/memfd:crest-buf (deleted)") == 0 && strcmp(link_of(12), "/memfd:plain (deleted)") == 0,
          "names: '%s', '%s'", link_of(10), link_of(12));
    CHECK("memfd", s10.st_size == 200000 && content_ok(10, 200000, 1, 100000), "memfd 10: %lld bytes, contents %s", (long long)s10.st_size,
          content_ok(10, 200000, 1, 100000) ? "ok" : "differ");
    char abc[8] = {0};
    CHECK("memfd", pread(12, abc, 8, 0) == 3 && strcmp(abc, "abc") == 0, "memfd 12 holds '%s'", abc);
    CHECK("seals", fcntl(10, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW) && fcntl(12, F_GET_SEALS) == F_SEAL_SEAL, "seals 10: %#x, 12: %#x",
          fcntl(10, F_GET_SEALS), fcntl(12, F_GET_SEALS));
    CHECK("flags", status_flags(10) == O_RDWR && status_flags(11) == O_RDONLY && status_flags(12) == (O_RDWR | O_APPEND) &&
                       status_flags(13) == O_RDWR && status_flags(14) == O_RDONLY && is_cloexec(10) == 1 && is_cloexec(11) == 0,
          "flags 10 0%o 11 0%o 12 0%o 13 0%o 14 0%o, cloexec 10 %d 11 %d", status_flags(10), status_flags(11), status_flags(12),
          status_flags(13), status_flags(14), is_cloexec(10), is_cloexec(11));
    CHECK("offsets", lseek(10, 0, SEEK_CUR) == 12345 && lseek(11, 0, SEEK_CUR) == 7 && lseek(13, 0, SEEK_CUR) == 100 && lseek(14, 0, SEEK_CUR) == 4000,
          "offsets 10 %lld 11 %lld 13 %lld 14 %lld", (long long)lseek(10, 0, SEEK_CUR), (long long)lseek(11, 0, SEEK_CUR),
          (long long)lseek(13, 0, SEEK_CUR), (long long)lseek(14, 0, SEEK_CUR));
    pwrite(10, "Q", 1, 150000);
    char q = 0;
    pread(11, &q, 1, 150000);
    CHECK("shared", s10.st_ino == s11.st_ino && !same_description(10, 11) && q == 'Q', "10/11: inodes %lu/%lu, same description %d, write seen %d",
          (unsigned long)s10.st_ino, (unsigned long)s11.st_ino, same_description(10, 11), q == 'Q');
    pwrite(10, "", 1, 150000);
    CHECK("deleted", s13.st_nlink == 0 && s13.st_size == 5000 && (s13.st_mode & 07777) == 0640 && s13.st_ino == s14.st_ino &&
                         content_ok(13, 5000, 2, 5000) && strncmp(link_of(13), wpath(""), strlen(wpath(""))) == 0 &&
                         strstr(link_of(13), "(deleted)") != NULL,
          "deleted file: links %lu, %lld bytes, mode %o, inodes %lu/%lu, contents %s, shown as '%s'", (unsigned long)s13.st_nlink,
          (long long)s13.st_size, (unsigned)(s13.st_mode & 07777), (unsigned long)s13.st_ino, (unsigned long)s14.st_ino,
          content_ok(13, 5000, 2, 5000) ? "ok" : "differ", link_of(13));
    (void)gone_link;
    return finish();
}
