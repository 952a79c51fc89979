/*
 * forker: a process with a child (a two-process tree restored with both PIDs).
 * The child polls for W/go as well and exits 42; the parent reaps it.
 */
#define TARGET_NAME "forker"
#include "common.h"
#include <sys/wait.h>

static const char *const KEYS[] = {"child", NULL};

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    pid_t child = fork();
    if (child < 0) DIE_ERRNO("fork");
    if (child == 0) {
        while (access(g_go_path, F_OK) != 0) sleep_ms(10);
        _exit(sabotage("child") ? 3 : 42);
    }
    write_filef("child", "%d\n", (int)child);
    announce_ready();
    wait_go(NULL);
    int status = 0;
    pid_t w = waitpid(child, &status, 0);
    CHECK("child", w == child && WIFEXITED(status) && WEXITSTATUS(status) == 42,
          "child %d: waitpid %d, status %#x (expected exit 42)", (int)child, (int)w, status);
    return finish();
}
