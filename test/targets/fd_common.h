/*
 * Helpers of the fd_* targets (each sets up one kind of open file at fixed
 * fd numbers and checks it after restore): putting an fd at a number,
 * reading its fdinfo, comparing flags.
 */
#ifndef CREST_FD_COMMON_H
#define CREST_FD_COMMON_H
#include "common.h"
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
#endif
