/*
 * fd_eventfd: eventfds at fixed fds.
 *   10 a counter of 0x123456789a (beyond eventfd2's 32-bit initial value), O_NONBLOCK, close-on-exec;
 *   11 an EFD_SEMAPHORE eventfd holding 3, blocking, not close-on-exec;
 *   12 a dup of 10 (same description).
 * After go: 10 reads the whole count once, then EAGAIN; 11 reads 1 three times
 * and is then not readable; flags, close-on-exec, fdinfo's semaphore flag,
 * and 12 still shares 10's description.
 */
#define TARGET_NAME "fd_eventfd"
#include "fd_common.h"
#include <sys/eventfd.h>

static const char *const KEYS[] = {"count", "semaphore", "flags", "cloexec", "shared", NULL};
#define BIG 0x123456789aULL

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    put_at(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 10, 1);
    uint64_t v = BIG;
    if (write(10, &v, 8) != 8) DIE_ERRNO("write 10");
    put_at(eventfd(3, EFD_SEMAPHORE), 11, 0);
    if (dup2(10, 12) != 12) DIE_ERRNO("dup2");
    announce_ready();
    wait_go(NULL);

    if (sabotage("count")) { v = 1; write(10, &v, 8); }
    if (sabotage("semaphore")) { v = 1; write(11, &v, 8); }
    if (sabotage("flags")) fcntl(11, F_SETFL, O_NONBLOCK);
    if (sabotage("cloexec")) fcntl(11, F_SETFD, FD_CLOEXEC);
    if (sabotage("shared")) { int e = eventfd(0, 0); dup2(e, 12); close(e); }

    CHECK("flags", status_flags(10) == (O_RDWR | O_NONBLOCK) && status_flags(11) == O_RDWR,
          "status flags 10: 0%o, 11: 0%o", status_flags(10), status_flags(11));
    CHECK("cloexec", is_cloexec(10) == 1 && is_cloexec(11) == 0 && is_cloexec(12) == 0,
          "close-on-exec 10: %d, 11: %d, 12: %d", is_cloexec(10), is_cloexec(11), is_cloexec(12));
    CHECK("shared", same_description(10, 12), "fd 12 no longer shares fd 10's description");
    CHECK("semaphore", strcmp(fdinfo_field(11, "eventfd-semaphore"), "1") == 0 && strcmp(fdinfo_field(10, "eventfd-semaphore"), "0") == 0,
          "fdinfo eventfd-semaphore 11: '%s', 10: '%s'", fdinfo_field(11, "eventfd-semaphore"), fdinfo_field(10, "eventfd-semaphore"));
    uint64_t got = 0;
    ssize_t n = read(10, &got, 8);
    int again = read(10, &v, 8) < 0 && errno == EAGAIN;
    CHECK("count", n == 8 && got == BIG && again, "read of fd 10: %zd bytes, %#llx (want %#llx), then %s", n,
          (unsigned long long)got, BIG, again ? "EAGAIN" : "not EAGAIN");
    int ones = 0;
    for (int i = 0; i < 3; i++) {
        uint64_t one = 0;
        if (poll_now(11, POLLIN) & POLLIN && read(11, &one, 8) == 8 && one == 1) ones++;
    }
    int left = poll_now(11, POLLIN) & POLLIN;
    CHECK("semaphore", ones == 3 && !left, "semaphore fd 11: %d reads of 1 (want 3), readable after: %d", ones, left);
    return finish();
}
