/*
 * The protocol every C/R target follows (test/harness.ts drives it):
 *
 *   target W [args...]
 *     1. sets up the one kind of state it is about;
 *     2. writes its getpid() to W/ready (atomically: W/ready.tmp + rename);
 *     3. polls for W/go with access(2) every 10 ms (nanosleep), calling its
 *        tick hook on every round, holding no fd beyond its state under test;
 *     4. once W/go exists, appends its pid to W/resumed, verifies its whole
 *        state against values computed before the checkpoint (kept in memory
 *        the checkpoint must preserve, cross-checked with files in W), and
 *        prints "PASS <name>" or "FAIL <name>: <key>: <what differed>; ..."
 *        on stdout, exiting 0 or 1. Exit 2 is a setup error (message on stderr).
 *
 * Every check has a key. CREST_TEST_SABOTAGE=<key> corrupts exactly the state
 * that check looks at, between "go" and the verification, so each check can
 * be shown to fail; CREST_TEST_SABOTAGE=1 (or "all") corrupts all of them.
 * `target --sabotage-list` prints the keys, one a line.
 * The key "pid" is common to all targets: getpid() against W/ready.
 */
#ifndef CREST_TARGET_COMMON_H
#define CREST_TARGET_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef TARGET_NAME
#error "define TARGET_NAME before including common.h"
#endif

#define UNUSED __attribute__((unused))

static const char *g_wdir;
static char g_go_path[PATH_MAX];
static const char *g_sabotage;           /* CREST_TEST_SABOTAGE, or NULL */
static char g_fail_msg[8192];
static size_t g_fail_len;
static int g_failed;

/* A setup error: not a verdict about the checkpoint. */
static UNUSED __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ERROR %s: ", TARGET_NAME);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

#define DIE_ERRNO(what) die("%s: %s (line %d)", (what), strerror(errno), __LINE__)

/* Path of `file` inside W: four rotating buffers, so a call may use a few at once. */
static UNUSED const char *wpath(const char *file)
{
    static char bufs[4][PATH_MAX];
    static unsigned next;
    char *b = bufs[next++ % 4];
    if ((size_t)snprintf(b, PATH_MAX, "%s/%s", g_wdir, file) >= PATH_MAX) die("path too long: %s", file);
    return b;
}

static UNUSED void write_all(int fd, const void *data, size_t len, const char *what)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            DIE_ERRNO(what);
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Writes W/file atomically (W/file.tmp then rename), holding no fd afterwards. */
static UNUSED void write_file(const char *file, const void *data, size_t len)
{
    char tmp[PATH_MAX + 8], dst[PATH_MAX];
    snprintf(dst, sizeof dst, "%s", wpath(file));
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) DIE_ERRNO(tmp);
    write_all(fd, data, len, tmp);
    if (close(fd) != 0) DIE_ERRNO(tmp);
    if (rename(tmp, dst) != 0) DIE_ERRNO(dst);
}

static UNUSED __attribute__((format(printf, 2, 3))) void write_filef(const char *file, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) die("write_filef(%s): too long", file);
    write_file(file, buf, (size_t)n);
}

/* Appends to W/file (O_APPEND, opened and closed here). */
static UNUSED void append_file(const char *file, const char *text)
{
    int fd = open(wpath(file), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) DIE_ERRNO(file);
    write_all(fd, text, strlen(text), file);
    close(fd);
}

/* Reads W/file into buf (NUL-terminated); returns its length, or -1 when it does not exist. */
static UNUSED ssize_t read_file(const char *file, char *buf, size_t cap)
{
    int fd = open(wpath(file), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return -1;
        DIE_ERRNO(file);
    }
    size_t got = 0;
    while (got + 1 < cap) {
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            DIE_ERRNO(file);
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    buf[got] = 0;
    close(fd);
    return (ssize_t)got;
}

/* The integer in W/file (decimal or 0x-hex); `dflt` when the file is missing or unparsable. */
static UNUSED long long read_ll(const char *file, long long dflt)
{
    char buf[128];
    if (read_file(file, buf, sizeof buf) < 0) return dflt;
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 0);
    if (errno != 0 || end == buf) return dflt;
    return v;
}

static UNUSED unsigned long long read_ull(const char *file, unsigned long long dflt)
{
    char buf[128];
    if (read_file(file, buf, sizeof buf) < 0) return dflt;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 0);
    if (errno != 0 || end == buf) return dflt;
    return v;
}

/* Records a failed check; the verdict is printed by finish(). */
static UNUSED __attribute__((format(printf, 2, 3))) void fail(const char *key, const char *fmt, ...)
{
    g_failed = 1;
    if (g_fail_len + 8 >= sizeof g_fail_msg) return;
    int n = snprintf(g_fail_msg + g_fail_len, sizeof g_fail_msg - g_fail_len, "%s%s: ", g_fail_len ? "; " : "", key);
    if (n > 0) g_fail_len += (size_t)n;
    if (g_fail_len >= sizeof g_fail_msg) {
        g_fail_len = sizeof g_fail_msg - 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(g_fail_msg + g_fail_len, sizeof g_fail_msg - g_fail_len, fmt, ap);
    va_end(ap);
    if (n > 0) g_fail_len += (size_t)n;
    if (g_fail_len >= sizeof g_fail_msg) g_fail_len = sizeof g_fail_msg - 1;
}

#define CHECK(key, cond, ...)                                                                                      \
    do {                                                                                                           \
        if (!(cond)) fail((key), __VA_ARGS__);                                                                     \
    } while (0)

/* True when the state checked under `key` must be corrupted now. */
static UNUSED int sabotage(const char *key)
{
    if (!g_sabotage) return 0;
    return strcmp(g_sabotage, "1") == 0 || strcmp(g_sabotage, "all") == 0 || strcmp(g_sabotage, key) == 0;
}

/*
 * Handles `--sabotage-list`, checks argv, sets W. `keys` is the target's
 * NULL-terminated list of check keys ("pid" is added here).
 */
static UNUSED void target_init(int argc, char **argv, const char *const *keys)
{
    if (argc >= 2 && strcmp(argv[1], "--sabotage-list") == 0) {
        printf("pid\n");
        for (const char *const *k = keys; *k; k++) printf("%s\n", *k);
        exit(0);
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s WORKDIR [args...]\n", argv[0]);
        exit(2);
    }
    g_wdir = argv[1];
    struct stat st;
    if (stat(g_wdir, &st) != 0 || !S_ISDIR(st.st_mode)) die("%s is not a directory", g_wdir);
    snprintf(g_go_path, sizeof g_go_path, "%s", wpath("go"));
    const char *s = getenv("CREST_TEST_SABOTAGE");
    if (s && *s) {
        int known = strcmp(s, "1") == 0 || strcmp(s, "all") == 0 || strcmp(s, "pid") == 0;
        for (const char *const *k = keys; *k && !known; k++) known = strcmp(s, *k) == 0;
        if (!known) die("unknown CREST_TEST_SABOTAGE key '%s'", s);
        g_sabotage = s;
    }
}

/* Step 2: W/ready holds our pid. */
static UNUSED void announce_ready(void)
{
    write_filef("ready", "%d\n", (int)getpid());
}

/* Sleeps `ms` milliseconds, across signal interruptions. */
static UNUSED void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L}, rem;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
}

static UNUSED double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Records that this process saw "go" (the harness checks no refused restore ever gets here). */
static UNUSED void mark_resumed(void)
{
    char line[64];
    snprintf(line, sizeof line, "%d\n", (int)getpid());
    append_file("resumed", line);
}

/*
 * Step 3: tick, then look for W/go, then sleep 10 ms, until go exists.
 * One nanosleep per round (an interrupting signal just ends that round early).
 */
static UNUSED void wait_go(void (*tick)(void))
{
    for (;;) {
        if (tick) tick();
        if (access(g_go_path, F_OK) == 0) break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    mark_resumed();
}

/* The check every target makes: same pid as at ready time. */
static UNUSED void verify_pid(void)
{
    if (sabotage("pid")) write_filef("ready", "%d\n", (int)getpid() + 100000);
    long long was = read_ll("ready", -1);
    CHECK("pid", was == (long long)getpid(), "getpid() is %d, W/ready says %lld", (int)getpid(), was);
}

/* Step 4's verdict: prints PASS/FAIL and returns the exit status. */
static UNUSED int finish(void)
{
    verify_pid();
    if (g_failed) {
        printf("FAIL %s: %s\n", TARGET_NAME, g_fail_msg);
    } else {
        printf("PASS %s\n", TARGET_NAME);
    }
    fflush(stdout);
    return g_failed ? 1 : 0;
}

/* xorshift64*: the pseudo-random patterns of the targets. */
static UNUSED uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* A seed that differs from run to run (so a stale state cannot pass by chance). */
static UNUSED uint64_t fresh_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    return s ? s : 0x9E3779B97F4A7C15ULL;
}

/* /proc/self/maps into a malloc'd NUL-terminated buffer (caller frees). */
static UNUSED char *read_self_maps(void)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) DIE_ERRNO("/proc/self/maps");
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    if (!b) die("out of memory");
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap *= 2;
            b = realloc(b, cap);
            if (!b) die("out of memory");
        }
        ssize_t n = read(fd, b + len, cap - len - 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            DIE_ERRNO("read /proc/self/maps");
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    b[len] = 0;
    return b;
}

/*
 * The lines of /proc/self/maps whose range overlaps [lo, hi), concatenated
 * (each ending in a newline) into out; returns how many.
 */
static UNUSED int maps_lines_overlapping(uintptr_t lo, uintptr_t hi, char *out, size_t cap)
{
    char *maps = read_self_maps();
    int count = 0;
    size_t used = 0;
    out[0] = 0;
    for (char *line = maps; *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        unsigned long s = 0, e = 0;
        if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s < hi && e > lo) {
            if (used + len + 2 > cap) die("maps lines do not fit in %zu bytes", cap);
            memcpy(out + used, line, len);
            used += len;
            out[used++] = '\n';
            out[used] = 0;
            count++;
        }
        if (!nl) break;
        line = nl + 1;
    }
    free(maps);
    return count;
}

/* `text` with its newlines turned into " | " (for one-line FAIL messages), in a rotating buffer. */
static UNUSED const char *oneline(const char *text)
{
    static char bufs[2][8192];
    static unsigned next;
    char *b = bufs[next++ % 2];
    size_t o = 0;
    for (const char *p = text; *p && o + 4 < sizeof bufs[0]; p++) {
        if (*p == '\n') {
            if (p[1] == 0) break;
            memcpy(b + o, " | ", 3);
            o += 3;
        } else {
            b[o++] = *p;
        }
    }
    b[o] = 0;
    return b;
}

#endif
