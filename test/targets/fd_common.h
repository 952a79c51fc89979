/*
 * Helpers of the fd_* targets (each sets up one kind of open file at fixed
 * fd numbers and checks it after restore): putting an fd at a number,
 * reading its fdinfo, comparing flags, listing the open fds.
 */
#ifndef CREST_FD_COMMON_H
#define CREST_FD_COMMON_H
#include "common.h"
#include <dirent.h>
#include <poll.h>
#include <sys/syscall.h>

/* Moves `fd` to number `at` (close-on-exec as asked) and returns `at`. */
static UNUSED int put_at(int fd, int at, int cloexec)
{
    if (fd < 0) DIE_ERRNO("creating the fd");
    if (fd == at) {
        if (fcntl(at, F_SETFD, cloexec ? FD_CLOEXEC : 0) != 0) DIE_ERRNO("F_SETFD");
        return at;
    }
    if (dup3(fd, at, cloexec ? O_CLOEXEC : 0) != at) DIE_ERRNO("dup3");
    close(fd);
    return at;
}

/* /proc/self/fdinfo/FD into buf (NUL-terminated). */
static UNUSED void fdinfo(int fd, char *buf, size_t cap)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    int f = open(p, O_RDONLY | O_CLOEXEC);
    if (f < 0) DIE_ERRNO(p);
    ssize_t n = read(f, buf, cap - 1);
    if (n < 0) DIE_ERRNO(p);
    buf[n] = 0;
    close(f);
}

/* The value after "key:" in fdinfo of fd, trimmed, in a static buffer ("" when absent). */
static UNUSED const char *fdinfo_field(int fd, const char *key)
{
    static char out[256];
    char buf[8192];
    fdinfo(fd, buf, sizeof buf);
    size_t kl = strlen(key);
    out[0] = 0;
    for (char *l = buf; *l;) {
        char *nl = strchr(l, '\n');
        if (strncmp(l, key, kl) == 0 && l[kl] == ':') {
            char *v = l + kl + 1;
            while (*v == ' ' || *v == '\t') v++;
            size_t n = nl ? (size_t)(nl - v) : strlen(v);
            if (n >= sizeof out) n = sizeof out - 1;
            memcpy(out, v, n);
            out[n] = 0;
            break;
        }
        if (!nl) break;
        l = nl + 1;
    }
    return out;
}

/* File status flags without the access mode's neighbours that F_GETFL adds on 64-bit (O_LARGEFILE). */
static UNUSED int status_flags(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fl & ~0100000; /* the kernel's O_LARGEFILE (glibc defines it as 0 on x86-64) */
}

static UNUSED int is_cloexec(int fd)
{
    int f = fcntl(fd, F_GETFD);
    return f < 0 ? -1 : (f & FD_CLOEXEC) != 0;
}

/* poll revents of fd for `events`, without waiting. */
static UNUSED int poll_now(int fd, short events)
{
    struct pollfd p = {fd, events, 0};
    int r = poll(&p, 1, 0);
    return r < 0 ? -1 : p.revents;
}

/* True when fds a and b of this process share one open file description. */
static UNUSED int same_description(int a, int b)
{
    return syscall(SYS_kcmp, getpid(), getpid(), 0 /* KCMP_FILE */, a, b) == 0;
}

/* The open fds as a string "0 1 2 10 11 ...". */
static UNUSED void fdset(char *out, size_t cap)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) DIE_ERRNO("opendir");
    int dfd = dirfd(d), fds[256], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd != dfd) fds[n++] = fd;
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (fds[j] < fds[i]) { int t = fds[i]; fds[i] = fds[j]; fds[j] = t; }
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) used += (size_t)snprintf(out + used, cap - used, "%d ", fds[i]);
}
#endif
