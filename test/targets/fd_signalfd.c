/*
 * fd_signalfd: a signalfd at fd 10 for SIGUSR1 and SIGRTMIN+2 (both blocked),
 * O_NONBLOCK, close-on-exec, with SIGUSR1 pending at the checkpoint (sent
 * with sigqueue and a value).
 * After go: the signalfd reads the pending SIGUSR1 with its value, then
 * nothing; a SIGRTMIN+2 raised now is read through it; SIGUSR2 is not in
 * its mask (fdinfo); flags and close-on-exec.
 */
#define TARGET_NAME "fd_signalfd"
#include "fd_common.h"
#include <signal.h>
#include <sys/signalfd.h>

static const char *const KEYS[] = {"mask", "pending", "flags", NULL};

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGRTMIN + 2);
    if (sigprocmask(SIG_BLOCK, &m, NULL) != 0) DIE_ERRNO("sigprocmask");
    put_at(signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC), 10, 1);
    union sigval val = {.sival_int = 4242};
    if (sigqueue(getpid(), SIGUSR1, val) != 0) DIE_ERRNO("sigqueue");
    char want_mask[64];
    snprintf(want_mask, sizeof want_mask, "%s", fdinfo_field(10, "sigmask"));
    announce_ready();
    wait_go(NULL);

    if (sabotage("mask")) {
        sigset_t o;
        sigemptyset(&o);
        sigaddset(&o, SIGUSR1);
        signalfd(10, &o, 0);
    }
    if (sabotage("pending")) {
        struct timespec z = {0, 0};
        sigset_t u;
        sigemptyset(&u);
        sigaddset(&u, SIGUSR1);
        sigtimedwait(&u, NULL, &z);
    }
    if (sabotage("flags")) fcntl(10, F_SETFD, 0);

    CHECK("flags", status_flags(10) == (O_RDWR | O_NONBLOCK) && is_cloexec(10) == 1, "fd 10 flags 0%o, close-on-exec %d",
          status_flags(10), is_cloexec(10));
    CHECK("mask", strcmp(fdinfo_field(10, "sigmask"), want_mask) == 0, "fdinfo sigmask '%s', was '%s'", fdinfo_field(10, "sigmask"),
          want_mask);
    struct signalfd_siginfo si;
    memset(&si, 0, sizeof si);
    ssize_t n = read(10, &si, sizeof si);
    CHECK("pending", n == (ssize_t)sizeof si && si.ssi_signo == SIGUSR1 && si.ssi_int == 4242,
          "first read: %zd bytes, signal %u, value %d (want SIGUSR1 with 4242)", n, si.ssi_signo, si.ssi_int);
    n = read(10, &si, sizeof si);
    CHECK("pending", n < 0 && errno == EAGAIN, "second read: %zd (want EAGAIN)", n);
    raise(SIGRTMIN + 2);
    memset(&si, 0, sizeof si);
    n = read(10, &si, sizeof si);
    CHECK("mask", n == (ssize_t)sizeof si && (int)si.ssi_signo == SIGRTMIN + 2, "SIGRTMIN+2 read: %zd bytes, signal %u", n,
          si.ssi_signo);
    return finish();
}
