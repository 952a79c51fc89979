/*
 * fd_other: an fd of a kind crest does not handle: a pidfd of the target
 * itself at fd 10. A checkpoint must refuse it, naming the pid, the fd and
 * the kind, and leave the process running. After go: the pidfd still
 * refers to this process.
 */
#define TARGET_NAME "fd_other"
#include "fd_common.h"

static const char *const KEYS[] = {"pidfd", NULL};

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    put_at((int)syscall(SYS_pidfd_open, getpid(), 0), 10, 1);
    announce_ready();
    wait_go(NULL);
    if (sabotage("pidfd")) dup2((int)syscall(SYS_pidfd_open, getppid(), 0), 10);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    CHECK("pidfd", strcmp(fdinfo_field(10, "Pid"), pid) == 0, "fdinfo of fd 10 says Pid '%s' (want %s)", fdinfo_field(10, "Pid"), pid);
    return finish();
}
