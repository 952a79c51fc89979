/*
 * signals: dispositions, masks, the alternate stack and pending signals.
 * Before ready:
 *   SIGUSR1: SA_SIGINFO|SA_RESTART handler, mask {SIGINT, SIGQUIT};
 *   SIGUSR2: SA_NODEFER handler, mask {SIGPIPE};
 *   SIGTERM: SIG_IGN;
 *   SIGHUP:  SA_ONSTACK handler, on a sigaltstack of 64 KiB;
 *   SIGUSR2 and SIGRTMIN+1 blocked; SIGUSR2 raised (pending);
 *   SIGRTMIN+1 queued twice with values 11 and 22.
 * After go: every sigaction, the blocked mask, the alternate stack and the
 * pending set are as before (in memory and in W/signals.before); unblocking
 * delivers SIGUSR2 once and SIGRTMIN+1 twice, with 11 then 22, sent by us;
 * the handlers run with the right masks; SIGHUP runs on the alternate stack;
 * SIGTERM stays ignored.
 */
#define TARGET_NAME "signals"
#include "common.h"
#include <signal.h>

static const char *const KEYS[] = {"usr1_action", "usr2_action", "term_action", "hup_action", "altstack",
                                   "mask", "pending_usr2", "rt_queue", "rt_order", NULL};

#define ALTSZ (64 * 1024)
static char altstack_mem[ALTSZ] __attribute__((aligned(16)));

static volatile int usr1_count, usr1_masked_ok, usr1_info_ok;
static volatile int usr2_count, usr2_mask_ok;
static volatile int rt_count;
static volatile int rt_values[8];
static volatile int rt_code[8];
static volatile pid_t rt_pid[8];
static volatile int hup_count, hup_on_altstack, hup_ss_onstack;
static volatile int term_count;

static sigset_t current_mask(void)
{
    sigset_t m;
    sigemptyset(&m);
    sigprocmask(SIG_BLOCK, NULL, &m);
    return m;
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    sigset_t m = current_mask();
    usr1_masked_ok = sigismember(&m, SIGINT) && sigismember(&m, SIGQUIT) && sigismember(&m, SIGUSR1);
    usr1_info_ok = sig == SIGUSR1 && si->si_signo == SIGUSR1 && si->si_pid == getpid();
    usr1_count++;
}

static void on_usr2(int sig)
{
    (void)sig;
    sigset_t m = current_mask();
    usr2_mask_ok = sigismember(&m, SIGPIPE) && !sigismember(&m, SIGUSR2);
    usr2_count++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    int i = rt_count;
    if (i < 8) {
        rt_values[i] = si->si_value.sival_int;
        rt_code[i] = si->si_code;
        rt_pid[i] = si->si_pid;
    }
    rt_count = i + 1;
}

static void on_hup(int sig)
{
    (void)sig;
    char here;
    uintptr_t a = (uintptr_t)&here;
    hup_on_altstack = a >= (uintptr_t)altstack_mem && a < (uintptr_t)altstack_mem + ALTSZ;
    stack_t ss;
    sigaltstack(NULL, &ss);
    hup_ss_onstack = (ss.ss_flags & SS_ONSTACK) != 0;
    hup_count++;
}

static void on_term(int sig)
{
    (void)sig;
    term_count++;
}

static void install(int sig, void (*h)(int), void (*sa)(int, siginfo_t *, void *), int flags, int m1, int m2)
{
    struct sigaction act;
    memset(&act, 0, sizeof act);
    if (sa) act.sa_sigaction = sa;
    else act.sa_handler = h;
    act.sa_flags = flags;
    sigemptyset(&act.sa_mask);
    if (m1) sigaddset(&act.sa_mask, m1);
    if (m2) sigaddset(&act.sa_mask, m2);
    if (sigaction(sig, &act, NULL) != 0) DIE_ERRNO("sigaction");
}

/* The parts of a sigaction that matter, as text: handler, flags, mask words. */
static void describe(int sig, char *out, size_t cap)
{
    struct sigaction a;
    sigaction(sig, NULL, &a);
    const unsigned long *w = (const unsigned long *)&a.sa_mask;
    snprintf(out, cap, "%d:%p/%#x/%#lx", sig, (void *)a.sa_handler, (unsigned)a.sa_flags, w[0]);
}

static const int SIGS[] = {SIGUSR1, SIGUSR2, SIGTERM, SIGHUP};
static const char *const SIG_KEYS[] = {"usr1_action", "usr2_action", "term_action", "hup_action"};

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    const int RT = SIGRTMIN + 1;

    install(SIGUSR1, NULL, on_usr1, SA_SIGINFO | SA_RESTART, SIGINT, SIGQUIT);
    install(SIGUSR2, on_usr2, NULL, SA_NODEFER, SIGPIPE, 0);
    install(SIGTERM, SIG_IGN, NULL, 0, 0, 0);
    install(SIGHUP, on_hup, NULL, SA_ONSTACK, 0, 0);
    install(RT, NULL, on_rt, SA_SIGINFO, 0, 0);
    stack_t ss = {.ss_sp = altstack_mem, .ss_size = ALTSZ, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) DIE_ERRNO("sigaltstack");

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, RT);
    sigprocmask(SIG_BLOCK, &block, NULL);
    raise(SIGUSR2);
    union sigval v;
    v.sival_int = 11;
    if (sigqueue(getpid(), RT, v) != 0) DIE_ERRNO("sigqueue");
    v.sival_int = 22;
    if (sigqueue(getpid(), RT, v) != 0) DIE_ERRNO("sigqueue");

    char before[4][128];
    for (int i = 0; i < 4; i++) describe(SIGS[i], before[i], sizeof before[i]);
    stack_t ss_before;
    sigaltstack(NULL, &ss_before);
    sigset_t mask_before = current_mask();
    write_filef("signals.before", "%s\n%s\n%s\n%s\nss %p %zu %d\nmask %#lx\n", before[0], before[1], before[2],
                before[3], ss_before.ss_sp, ss_before.ss_size, ss_before.ss_flags,
                *(const unsigned long *)&mask_before);

    announce_ready();
    wait_go(NULL);

    if (sabotage("usr1_action")) install(SIGUSR1, NULL, on_usr1, SA_SIGINFO, SIGINT, SIGQUIT);
    if (sabotage("usr2_action")) install(SIGUSR2, on_usr2, NULL, SA_NODEFER, SIGPIPE, SIGALRM);
    if (sabotage("term_action")) install(SIGTERM, on_term, NULL, 0, 0, 0);
    if (sabotage("hup_action")) install(SIGHUP, on_hup, NULL, 0, 0, 0);
    if (sabotage("altstack")) {
        stack_t off = {.ss_flags = SS_DISABLE};
        sigaltstack(&off, NULL);
    }
    if (sabotage("mask")) {
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGWINCH);
        sigprocmask(SIG_BLOCK, &m, NULL);
    }
    if (sabotage("pending_usr2")) {
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGUSR2);
        struct timespec zero = {0, 0};
        sigtimedwait(&m, NULL, &zero);
    }
    if (sabotage("rt_queue") || sabotage("rt_order")) {
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, RT);
        struct timespec zero = {0, 0};
        siginfo_t a, b;
        int ga = sigtimedwait(&m, &a, &zero) == RT;
        int gb = sigtimedwait(&m, &b, &zero) == RT;
        if (sabotage("rt_order") && ga && gb) {
            sigqueue(getpid(), RT, b.si_value);
            sigqueue(getpid(), RT, a.si_value);
        } else if (sabotage("rt_order") && ga) {
            sigqueue(getpid(), RT, a.si_value);
        }
    }

    /* Dispositions, from memory and from the file. */
    char saved[1024];
    read_file("signals.before", saved, sizeof saved);
    for (int i = 0; i < 4; i++) {
        char now[128];
        describe(SIGS[i], now, sizeof now);
        CHECK(SIG_KEYS[i], strcmp(now, before[i]) == 0 && strstr(saved, before[i]) != NULL,
              "sigaction was %s, now %s", before[i], now);
    }
    struct sigaction a;
    sigaction(SIGUSR1, NULL, &a);
    CHECK("usr1_action", (a.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART) &&
                             a.sa_sigaction == on_usr1 && sigismember(&a.sa_mask, SIGINT) &&
                             sigismember(&a.sa_mask, SIGQUIT),
          "SIGUSR1 action is not the installed one");
    sigaction(SIGTERM, NULL, &a);
    CHECK("term_action", a.sa_handler == SIG_IGN, "SIGTERM is not ignored");

    stack_t ss_now;
    sigaltstack(NULL, &ss_now);
    CHECK("altstack",
          ss_now.ss_sp == ss_before.ss_sp && ss_now.ss_size == ss_before.ss_size &&
              ss_now.ss_flags == ss_before.ss_flags,
          "sigaltstack was %p/%zu/%d, now %p/%zu/%d", ss_before.ss_sp, ss_before.ss_size, ss_before.ss_flags,
          ss_now.ss_sp, ss_now.ss_size, ss_now.ss_flags);

    sigset_t mask_now = current_mask();
    /* The kernel's sigset is 64 bits: the first word of glibc's sigset_t (the rest is not defined). */
    CHECK("mask", *(const unsigned long *)&mask_now == *(const unsigned long *)&mask_before, "blocked mask was %#lx, now %#lx",
          *(const unsigned long *)&mask_before, *(const unsigned long *)&mask_now);

    sigset_t pend;
    sigpending(&pend);
    CHECK("pending_usr2", sigismember(&pend, SIGUSR2), "SIGUSR2 is not pending");
    CHECK("rt_queue", sigismember(&pend, RT), "SIGRTMIN+1 is not pending");
    CHECK("mask", !sigismember(&pend, SIGUSR1) && !sigismember(&pend, SIGHUP), "unexpected signals pending");

    /* Delivery. */
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    CHECK("pending_usr2", usr2_count == 1, "SIGUSR2 delivered %d times after unblocking, expected 1", usr2_count);
    CHECK("usr2_action", usr2_mask_ok, "SIGUSR2 handler ran with a wrong mask");
    CHECK("rt_queue", rt_count == 2, "SIGRTMIN+1 delivered %d times, expected 2", rt_count);
    if (rt_count == 2) {
        CHECK("rt_order", rt_values[0] == 11 && rt_values[1] == 22, "SIGRTMIN+1 values %d, %d (expected 11, 22)",
              rt_values[0], rt_values[1]);
        CHECK("rt_queue", rt_code[0] == SI_QUEUE && rt_code[1] == SI_QUEUE && rt_pid[0] == getpid() &&
                              rt_pid[1] == getpid(),
              "SIGRTMIN+1 siginfo: codes %d/%d pids %d/%d", rt_code[0], rt_code[1], (int)rt_pid[0],
              (int)rt_pid[1]);
    }

    raise(SIGUSR1);
    CHECK("usr1_action", usr1_count == 1 && usr1_masked_ok && usr1_info_ok,
          "SIGUSR1 handler: ran %d times, mask ok %d, siginfo ok %d", usr1_count, usr1_masked_ok, usr1_info_ok);
    raise(SIGHUP);
    CHECK("hup_action", hup_count == 1, "SIGHUP handler ran %d times", hup_count);
    CHECK("altstack", hup_on_altstack && hup_ss_onstack, "SIGHUP handler did not run on the alternate stack");
    raise(SIGTERM);
    CHECK("term_action", term_count == 0, "SIGTERM reached a handler");

    return finish();
}
