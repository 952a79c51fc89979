/*
 * Process-tree targets (test/cr/trees.test.ts): several processes, each
 * verifying its own state after restore. The protocol on top of common.h:
 *   - every process but the top one, once its state is set up, writes
 *     W/set.NAME; the top one announces ready only when all are there;
 *   - after W/go each of them writes W/res.NAME: "ok", or what differed;
 *   - the top one collects the res files (bounded wait), adds its own
 *     checks and prints the verdict.
 * No process holds a file open at the checkpoint (W files are written
 * whole and closed).
 */
#ifndef CREST_TREE_COMMON_H
#define CREST_TREE_COMMON_H
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

/* Who a process is in its tree. */
struct ident {
    pid_t pid, ppid, pgid, sid;
};

static UNUSED struct ident ident_now(void)
{
    struct ident i = {getpid(), getppid(), getpgid(0), getsid(0)};
    return i;
}

static UNUSED const char *ident_str(struct ident i)
{
    static char b[2][96];
    static unsigned n;
    char *s = b[n++ % 2];
    snprintf(s, sizeof b[0], "pid %d ppid %d pgid %d sid %d", (int)i.pid, (int)i.ppid, (int)i.pgid, (int)i.sid);
    return s;
}

static UNUSED int ident_eq(struct ident a, struct ident b)
{
    return a.pid == b.pid && a.ppid == b.ppid && a.pgid == b.pgid && a.sid == b.sid;
}

/* Waits (bounded, 30 s) for W/file to exist. 0 when it did. */
static UNUSED int wait_file(const char *file)
{
    for (int i = 0; i < 3000; i++) {
        if (access(wpath(file), F_OK) == 0) return 0;
        sleep_ms(10);
    }
    return -1;
}

/* Polls for W/go without marking W/resumed (only the top process does). */
static UNUSED void wait_go_quiet(void)
{
    while (access(g_go_path, F_OK) != 0) sleep_ms(10);
}

static UNUSED void mark_set(const char *name)
{
    char f[64];
    snprintf(f, sizeof f, "set.%s", name);
    write_filef(f, "%d\n", (int)getpid());
}

/* A non-top process's verdict: the failures recorded with CHECK, or ok. */
static UNUSED void report_result(const char *name)
{
    char f[64];
    snprintf(f, sizeof f, "res.%s", name);
    if (g_failed)
        write_filef(f, "%s\n", g_fail_msg);
    else
        write_filef(f, "ok\n");
}

/* The top process: waits for every W/set.NAME. */
static UNUSED void await_set(const char *const *names)
{
    char f[64];
    for (const char *const *n = names; *n; n++) {
        snprintf(f, sizeof f, "set.%s", *n);
        if (wait_file(f) != 0) die("%s never set itself up", *n);
    }
}

/* The top process: every W/res.NAME must say ok. */
static UNUSED void collect_results(const char *const *names)
{
    char f[64], buf[8192];
    for (const char *const *n = names; *n; n++) {
        snprintf(f, sizeof f, "res.%s", *n);
        if (wait_file(f) != 0) {
            fail(*n, "no result from process %s", *n);
            continue;
        }
        read_file(f, buf, sizeof buf);
        buf[strcspn(buf, "\n")] = 0;
        CHECK(*n, strcmp(buf, "ok") == 0, "%s", buf);
    }
}

/* Field `n` (1-based, as in proc(5)) of /proc/PID/stat, or -1. */
static UNUSED long long stat_field(pid_t pid, int n)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0) return -1;
    buf[len] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    p += 2; /* field 3, the state */
    for (int i = 3; i < n; i++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    if (n == 3) return *p;
    return strtoll(p, NULL, 10);
}
#endif
