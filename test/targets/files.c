/*
 * files: open file descriptions and descriptors, at fixed fd numbers:
 *   10 APP       W/append.log, O_WRONLY|O_APPEND: one 9-byte line "%08llu\n"
 *                per round of the wait loop (counter 0, 1, 2, ...);
 *   11 RO        W/data.bin, O_RDONLY, at offset 1234, close-on-exec;
 *   12 DUPA      W/dup.bin, O_RDWR, offset 100;
 *   13 DUPB      dup of 12 (same description, shared offset), close-on-exec;
 *   14 OTHER     W/dup.bin opened again (its own offset 50);
 *   15 CLOEXEC   W/data.bin O_RDONLY at 2000, close-on-exec;
 *   16 NOCLOEXEC W/data.bin O_RDONLY|O_NONBLOCK at 3000;
 *   17 NULL      /dev/null O_WRONLY, close-on-exec.
 * After go: the set of open fds is the one at ready; every fd has its
 * status flags, close-on-exec flag, file identity and offset (the append
 * fd's is checked before every write: it must be where the last write left
 * it, i.e. after a restore where it was in the image); every line written is
 * in append.log where it was written, lines 0, 1, 2 ... contiguous from the
 * start (a restore of the same image a second time finds lines of the first
 * restore after its image-time offset: its own lines come after those); a new
 * line goes to the end of the file; the RO fd reads the expected bytes at
 * 1234; a read on DUPA moves DUPB and not OTHER; /dev/null is /dev/null.
 */
#define TARGET_NAME "files"
#include "common.h"
#include <dirent.h>
#include <sys/sysmacros.h>

static const char *const KEYS[] = {"fdset", "flags", "append_flags", "cloexec", "identity", "offsets",
                                   "append_offset", "append_lines", "append_write", "ro_offset", "ro_content",
                                   "dup_share", "devnull", NULL};

enum { APP = 10, RO, DUPA, DUPB, OTHER, CLOEXEC, NOCLOEXEC, DEVNULL, FD_END };
#define NFD (FD_END - APP)
static const char *const FD_NAME[NFD] = {"APP", "RO", "DUPA", "DUPB", "OTHER", "CLOEXEC", "NOCLOEXEC", "NULL"};
#define LINE 9

struct fdstate {
    int fl, fd_flags;
    off_t pos;
    dev_t dev;
    ino_t ino;
};
static struct fdstate before[NFD];
static unsigned char fdset_before[1024];

static uint64_t seed;
static volatile unsigned long long counter;
static volatile off_t app_pos; /* where the append fd is after our last write */

static unsigned char pat(int file, size_t i)
{
    uint64_t z = seed ^ ((uint64_t)file << 48) ^ (uint64_t)i;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (unsigned char)(z ^ (z >> 31));
}

static void make_file(const char *name, int file, size_t size)
{
    unsigned char *b = malloc(size);
    for (size_t i = 0; i < size; i++) b[i] = pat(file, i);
    write_file(name, b, size);
    free(b);
}

/* Opens path and puts the description at fd `at`. */
static void place(const char *path, int flags, int at, int cloexec, off_t pos)
{
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) DIE_ERRNO(path);
    if (dup3(fd, at, cloexec ? O_CLOEXEC : 0) != at) DIE_ERRNO("dup3");
    close(fd);
    if (pos && lseek(at, pos, SEEK_SET) != pos) DIE_ERRNO("lseek");
}

static void snapshot(struct fdstate *s)
{
    for (int i = 0; i < NFD; i++) {
        int fd = APP + i;
        struct stat st;
        s[i].fl = fcntl(fd, F_GETFL);
        s[i].fd_flags = fcntl(fd, F_GETFD);
        s[i].pos = lseek(fd, 0, SEEK_CUR);
        if (fstat(fd, &st) == 0) {
            s[i].dev = st.st_dev;
            s[i].ino = st.st_ino;
        } else {
            s[i].dev = 0;
            s[i].ino = 0;
        }
    }
}

/* The open fds (below 1024), without the one listing them. Returns how many. */
static int fdset(unsigned char *set)
{
    memset(set, 0, 1024);
    DIR *d = opendir("/proc/self/fd");
    if (!d) DIE_ERRNO("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd == dirfd(d) || fd >= 1024) continue;
        set[fd] = 1;
        n++;
    }
    closedir(d);
    return n;
}

/*
 * Each round: the fd's offset must still be where our last write left it
 * (after a restore: the offset in the image), then one line goes to the end
 * of the file (O_APPEND) and we remember where it landed. A later restore of
 * the same image finds the file longer (earlier restores appended to it): its
 * lines land further on, which the offsets kept here account for.
 */
#define MAX_LINES (1 << 17)
static off_t line_at[MAX_LINES];
static volatile unsigned long offset_moved;
static volatile off_t moved_was, moved_expected;

static void tick(void)
{
    off_t cur = lseek(APP, 0, SEEK_CUR);
    if (cur != app_pos && offset_moved++ == 0) {
        moved_was = cur;
        moved_expected = app_pos;
    }
    char line[32];
    snprintf(line, sizeof line, "%08llu\n", counter);
    write_all(APP, line, LINE, "append.log");
    off_t end = lseek(APP, 0, SEEK_CUR);
    if (counter < MAX_LINES) line_at[counter] = end - LINE;
    counter = counter + 1;
    app_pos = end;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    seed = fresh_seed();
    make_file("data.bin", 1, 8192);
    make_file("dup.bin", 2, 4096);
    write_file("append.log", "", 0);

    place(wpath("append.log"), O_WRONLY | O_APPEND, APP, 0, 0);
    place(wpath("data.bin"), O_RDONLY, RO, 1, 1234);
    place(wpath("dup.bin"), O_RDWR, DUPA, 0, 100);
    if (dup3(DUPA, DUPB, O_CLOEXEC) != DUPB) DIE_ERRNO("dup3");
    place(wpath("dup.bin"), O_RDONLY, OTHER, 0, 50);
    place(wpath("data.bin"), O_RDONLY, CLOEXEC, 1, 2000);
    place(wpath("data.bin"), O_RDONLY | O_NONBLOCK, NOCLOEXEC, 0, 3000);
    place("/dev/null", O_WRONLY, DEVNULL, 1, 0);
    for (int i = 0; i < 5; i++) tick();
    const unsigned long long lines_at_ready = counter;

    snapshot(before);
    int nfds = fdset(fdset_before);
    char desc[2048];
    size_t o = 0;
    for (int i = 0; i < NFD; i++)
        o += (size_t)snprintf(desc + o, sizeof desc - o, "%d %s fl=%#o fd=%d pos=%lld dev=%#lx ino=%lu\n", APP + i,
                              FD_NAME[i], before[i].fl, before[i].fd_flags, (long long)before[i].pos,
                              (unsigned long)before[i].dev, (unsigned long)before[i].ino);
    o += (size_t)snprintf(desc + o, sizeof desc - o, "nfds=%d\n", nfds);
    write_file("fds.before", desc, o);

    announce_ready();
    wait_go(tick);

    if (sabotage("fdset") && open("/dev/zero", O_RDONLY) < 0) DIE_ERRNO("/dev/zero");
    if (sabotage("flags")) fcntl(NOCLOEXEC, F_SETFL, fcntl(NOCLOEXEC, F_GETFL) & ~O_NONBLOCK);
    if (sabotage("append_flags")) fcntl(APP, F_SETFL, fcntl(APP, F_GETFL) & ~O_APPEND);
    if (sabotage("cloexec")) fcntl(DUPB, F_SETFD, 0);
    if (sabotage("identity")) place(wpath("data.bin"), O_RDONLY, OTHER, 0, 50);
    if (sabotage("offsets")) lseek(CLOEXEC, 1, SEEK_CUR);
    if (sabotage("append_offset")) lseek(APP, 3, SEEK_SET);
    if (sabotage("append_lines")) {
        int w = open(wpath("append.log"), O_WRONLY | O_CLOEXEC);
        if (w < 0 || pwrite(w, "99999999", 8, 2 * LINE) != 8) DIE_ERRNO("sabotage append.log");
        close(w);
    }
    if (sabotage("ro_offset")) lseek(RO, 1000, SEEK_SET);
    if (sabotage("ro_content")) {
        int w = open(wpath("data.bin"), O_WRONLY | O_CLOEXEC);
        char x = (char)(pat(1, 1240) ^ 0x10);
        if (w < 0 || pwrite(w, &x, 1, 1240) != 1) DIE_ERRNO("sabotage data.bin");
        close(w);
    }
    if (sabotage("dup_share")) place(wpath("dup.bin"), O_RDWR, DUPB, 1, 100);
    if (sabotage("devnull")) place("/dev/zero", O_WRONLY, DEVNULL, 1, 0);

    /* The fd table. */
    unsigned char set_now[1024];
    int n_now = fdset(set_now);
    if (memcmp(set_now, fdset_before, sizeof set_now) != 0) {
        char extra[256] = "", missing[256] = "";
        for (int fd = 0; fd < 1024; fd++) {
            char *dst = set_now[fd] && !fdset_before[fd] ? extra : !set_now[fd] && fdset_before[fd] ? missing : NULL;
            if (dst && strlen(dst) < 200) sprintf(dst + strlen(dst), " %d", fd);
        }
        fail("fdset", "%d fds open, %d at ready; new:%s; gone:%s", n_now, nfds, extra, missing);
    }
    struct fdstate now[NFD];
    snapshot(now);
    static const char *const paths[NFD] = {"append.log", "data.bin", "dup.bin",  "dup.bin",
                                           "dup.bin",    "data.bin", "data.bin", NULL};
    for (int i = 0; i < NFD; i++) {
        const char *flkey = i == 0 ? "append_flags" : "flags";
        CHECK(flkey, now[i].fl == before[i].fl, "fd %d (%s): F_GETFL %#o, was %#o", APP + i, FD_NAME[i], now[i].fl,
              before[i].fl);
        CHECK("cloexec", now[i].fd_flags == before[i].fd_flags, "fd %d (%s): F_GETFD %d, was %d", APP + i,
              FD_NAME[i], now[i].fd_flags, before[i].fd_flags);
        if (i == DEVNULL - APP) continue;
        struct stat st;
        int ok = paths[i] && stat(wpath(paths[i]), &st) == 0 && st.st_dev == now[i].dev && st.st_ino == now[i].ino;
        CHECK("identity", ok && now[i].dev == before[i].dev && now[i].ino == before[i].ino,
              "fd %d (%s) is not W/%s any more", APP + i, FD_NAME[i], paths[i]);
        if (i == 0) continue;
        const char *okey = i == RO - APP ? "ro_offset" : "offsets";
        CHECK(okey, now[i].pos == before[i].pos, "fd %d (%s): offset %lld, was %lld", APP + i, FD_NAME[i],
              (long long)now[i].pos, (long long)before[i].pos);
    }
    const int appended = (before[0].fl & O_APPEND) != 0;
    CHECK("append_flags", appended && (now[0].fl & O_APPEND), "append.log fd lost O_APPEND");

    /* The append log: every line we wrote is where we wrote it; before the
       first line that had to go further (the file grew behind our back: an
       earlier restore of the same image), the lines are exactly 0, 1, 2 ... */
    const off_t pos = app_pos;
    const unsigned long long lines = counter;
    if (lines > MAX_LINES) die("more than %d lines", MAX_LINES);
    CHECK("append_offset", offset_moved == 0, "the append fd was at %lld before a write, not at %lld where the last one left it",
          (long long)moved_was, (long long)moved_expected);
    CHECK("append_offset", now[0].pos == pos, "append fd at offset %lld, expected %lld", (long long)now[0].pos,
          (long long)pos);
    {
        int r = open(wpath("append.log"), O_RDONLY | O_CLOEXEC);
        if (r < 0) DIE_ERRNO("append.log");
        struct stat st;
        fstat(r, &st);
        char *text = malloc((size_t)st.st_size + 1);
        ssize_t got = pread(r, text, (size_t)st.st_size, 0);
        close(r);
        CHECK("append_lines", got >= pos, "append.log has %lld bytes, less than the fd's offset %lld",
              (long long)got, (long long)pos);
        unsigned long long bad = 0, first = 0, contiguous = 0;
        while (contiguous < lines && line_at[contiguous] == (off_t)(contiguous * LINE)) contiguous++;
        for (unsigned long long k = 0; got >= pos && k < lines; k++) {
            char want[32];
            snprintf(want, sizeof want, "%08llu\n", k);
            int ok = line_at[k] + LINE <= got && memcmp(text + line_at[k], want, LINE) == 0 &&
                     (k == 0 || line_at[k] >= line_at[k - 1] + LINE);
            if (!ok && bad++ == 0) first = k;
        }
        CHECK("append_lines", bad == 0, "%llu of the %llu lines written are not where they were written, first line %llu",
              bad, lines, first);
        CHECK("append_lines", contiguous >= lines_at_ready && lines_at_ready > 0,
              "only the first %llu lines are contiguous from offset 0, %llu were written before ready", contiguous,
              lines_at_ready);
        free(text);
    }
    /* A new line goes to the end of the file, whatever the offset. */
    {
        if (sabotage("append_write")) {
            fcntl(APP, F_SETFL, fcntl(APP, F_GETFL) & ~O_APPEND);
            lseek(APP, 0, SEEK_SET);
        }
        struct stat st0, st1;
        fstat(APP, &st0);
        char line[32];
        snprintf(line, sizeof line, "%08llu\n", lines);
        write_all(APP, line, LINE, "append.log");
        fstat(APP, &st1);
        off_t p = lseek(APP, 0, SEEK_CUR);
        CHECK("append_write", st1.st_size == st0.st_size + LINE && p == st1.st_size,
              "a new line did not go to the end: size %lld -> %lld, offset %lld", (long long)st0.st_size,
              (long long)st1.st_size, (long long)p);
    }
    /* The read-only fd reads the expected bytes at 1234. */
    {
        unsigned char b[16];
        off_t p0 = lseek(RO, 0, SEEK_CUR);
        ssize_t got = read(RO, b, sizeof b);
        int ok = got == (ssize_t)sizeof b;
        for (size_t i = 0; ok && i < sizeof b; i++) ok = b[i] == pat(1, 1234 + i);
        CHECK(p0 == 1234 ? "ro_content" : "ro_offset", ok, "16 bytes read at %lld are not data.bin's bytes 1234..1249",
              (long long)p0);
        CHECK("ro_offset", lseek(RO, 0, SEEK_CUR) == 1250, "read fd at %lld after reading 16 bytes at 1234",
              (long long)lseek(RO, 0, SEEK_CUR));
    }
    /* Dup'd fds share the offset; the other description does not. */
    {
        unsigned char b[10];
        off_t a0 = lseek(DUPA, 0, SEEK_CUR);
        ssize_t got = read(DUPA, b, sizeof b);
        off_t pa = lseek(DUPA, 0, SEEK_CUR), pb = lseek(DUPB, 0, SEEK_CUR), po = lseek(OTHER, 0, SEEK_CUR);
        int ok = got == (ssize_t)sizeof b;
        for (size_t i = 0; ok && i < sizeof b; i++) ok = b[i] == pat(2, (size_t)a0 + i);
        CHECK("dup_share", ok && pa == a0 + 10 && pb == pa && po == 50,
              "after reading 10 bytes on fd %d at %lld: fd %d at %lld, fd %d at %lld, fd %d at %lld (content %s)", DUPA,
              (long long)a0, DUPA, (long long)pa, DUPB, (long long)pb, OTHER, (long long)po, ok ? "ok" : "wrong");
    }
    /* /dev/null. */
    {
        struct stat st, dn;
        int ok = fstat(DEVNULL, &st) == 0 && stat("/dev/null", &dn) == 0 && S_ISCHR(st.st_mode) &&
                 st.st_rdev == dn.st_rdev && write(DEVNULL, "x", 1) == 1;
        CHECK("devnull", ok, "fd %d is not /dev/null open for writing", DEVNULL);
    }
    return finish();
}
