/*
 * fd_async: signal-driven I/O (O_ASYNC), as nginx's master and workers use
 * on their channels.
 *   10/11 a unix socketpair; 10 has O_ASYNC, owner this process
 *         (F_SETOWN), signal SIGRTMIN+4 (F_SETSIG, so siginfo carries the fd);
 *   12/13 a pipe; 12 (read end) has O_ASYNC, owner the main thread
 *         (F_SETOWN_EX F_OWNER_TID), the default SIGIO;
 *   14    a socket with an owner (its process group, F_SETOWN -pgrp, the
 *         target leading a group of its own) but no O_ASYNC (SIGURG goes there).
 * After go: flags, owners and signals read back the same; a byte written
 * into 11 raises SIGRTMIN+4 with si_fd 10, one into 13 raises SIGIO.
 */
#define TARGET_NAME "fd_async"
#include "fd_common.h"
#include <signal.h>
#include <sys/socket.h>

static const char *const KEYS[] = {"flags", "owner", "signal", "delivered", NULL};

static volatile int rt_fd = -1, rt_hits, io_hits;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)uc;
    rt_hits = rt_hits + 1;
    rt_fd = si->si_fd;
}

static void on_io(int sig)
{
    (void)sig;
    io_hits = io_hits + 1;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 4, &sa, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_io;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGIO, &sa, NULL);
    if (getpgrp() != getpid() && setpgid(0, 0) != 0) DIE_ERRNO("setpgid");
    int sv[2], p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || pipe(p) != 0) DIE_ERRNO("socketpair/pipe");
    put_at(sv[0], 10, 0);
    put_at(sv[1], 11, 0);
    put_at(p[0], 12, 0);
    put_at(p[1], 13, 0);
    put_at(socket(AF_UNIX, SOCK_STREAM, 0), 14, 0);
    if (fcntl(10, F_SETOWN, getpid()) != 0 || fcntl(10, F_SETSIG, SIGRTMIN + 4) != 0 ||
        fcntl(10, F_SETFL, fcntl(10, F_GETFL) | O_ASYNC | O_NONBLOCK) != 0)
        DIE_ERRNO("async 10");
    struct f_owner_ex me = {F_OWNER_TID, (pid_t)syscall(SYS_gettid)};
    if (fcntl(12, F_SETOWN_EX, &me) != 0 || fcntl(12, F_SETFL, fcntl(12, F_GETFL) | O_ASYNC | O_NONBLOCK) != 0) DIE_ERRNO("async 12");
    if (fcntl(14, F_SETOWN, -getpgrp()) != 0) DIE_ERRNO("owner 14");
    announce_ready();
    wait_go(NULL);

    if (sabotage("flags")) fcntl(10, F_SETFL, fcntl(10, F_GETFL) & ~O_ASYNC);
    if (sabotage("owner")) fcntl(14, F_SETOWN, 0);
    if (sabotage("signal")) fcntl(10, F_SETSIG, 0);
    if (sabotage("delivered")) { struct f_owner_ex none = {F_OWNER_PID, 0}; fcntl(12, F_SETOWN_EX, &none); }

    struct f_owner_ex o10, o12, o14;
    fcntl(10, F_GETOWN_EX, &o10);
    fcntl(12, F_GETOWN_EX, &o12);
    fcntl(14, F_GETOWN_EX, &o14);
    CHECK("flags", (status_flags(10) & O_ASYNC) && (status_flags(12) & O_ASYNC) && !(status_flags(14) & O_ASYNC) && !(status_flags(13) & O_ASYNC),
          "O_ASYNC on 10 %d, 12 %d, 13 %d, 14 %d", !!(status_flags(10) & O_ASYNC), !!(status_flags(12) & O_ASYNC), !!(status_flags(13) & O_ASYNC),
          !!(status_flags(14) & O_ASYNC));
    CHECK("owner", o10.type == F_OWNER_PID && o10.pid == getpid() && o12.type == F_OWNER_TID && o12.pid == (pid_t)syscall(SYS_gettid) &&
                       o14.type == F_OWNER_PGRP && o14.pid == getpgrp(),
          "owners: 10 %d/%d (want pid %d), 12 %d/%d (want tid), 14 %d/%d (want pgrp %d)", o10.type, o10.pid, (int)getpid(), o12.type, o12.pid,
          o14.type, o14.pid, (int)getpgrp());
    CHECK("signal", fcntl(10, F_GETSIG) == SIGRTMIN + 4 && fcntl(12, F_GETSIG) == 0, "signals: 10 %d (want %d), 12 %d", fcntl(10, F_GETSIG),
          SIGRTMIN + 4, fcntl(12, F_GETSIG));
    write(11, "x", 1);
    write(13, "y", 1);
    for (int i = 0; i < 200 && (rt_hits == 0 || io_hits == 0); i++) sleep_ms(5);
    CHECK("delivered", rt_hits >= 1 && rt_fd == 10 && io_hits >= 1, "SIGRTMIN+4 %d times (si_fd %d), SIGIO %d times", rt_hits, rt_fd, io_hits);
    return finish();
}
