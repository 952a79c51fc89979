/*
 * crest-pidhelper: makes processes ("husks") with chosen PIDs - one, or a
 * tree of them - and threads in them with chosen TIDs, for the caller, in
 * the caller's own pid namespace.
 * crest then seizes the husk with ptrace and rebuilds a checkpointed process
 * in it. This is the program an administrator may grant
 * CAP_CHECKPOINT_RESTORE to (`setcap cap_checkpoint_restore+ep`), so that
 * ordinary users get their processes back with their original PIDs. It is
 * meant to be read in one sitting; docs/security.md is its threat model.
 *
 *   crest-pidhelper husk  --ctl FD --pid P [--tid T ...] [--pid C:PARENT [--tid T ...]] ...
 *       clone3 with set_tid: needs CAP_CHECKPOINT_RESTORE.
 *   crest-pidhelper cycle --ctl FD --pid P [--tid T ...] [--pid C:PARENT ...] [--within MS]
 *       no privilege: drops every capability first, then uses up IDs until
 *       the kernel's counter hands out the wanted one (bounded by MS).
 *   The first --pid is the top of the tree (the outer's child); each later
 *   one names its parent, an earlier --pid, whose husk creates it. A --tid
 *   is a thread of the --pid before it; --setsid makes the husk of the
 *   --pid before it lead a new session before it creates its children (so
 *   that they are in it, as they were).
 *   crest-pidhelper probe
 *   crest-pidhelper --help
 *
 * What it never does: run another program, read a file or the environment
 * of the caller's choosing, enter a namespace, change an id, or let the
 * husk run a single instruction of the caller's before every capability is
 * gone from every thread (effective, permitted, inheritable, ambient).
 *
 * Processes:
 *   outer  the program itself. Checks its caller and arguments, creates the
 *          husk, drops every capability it holds, reports on the ctl fd,
 *          then only waits for the husk, forwards signals to it and mirrors
 *          its end (like crest-helper's outer).
 *   husk   the child: dies with its parent until crest takes it over
 *          (PR_SET_PDEATHSIG; crest sets the process's own back), creates
 *          its threads (each drops its capabilities before anything else),
 *          then its child husks (each does all of this for its subtree and
 *          reports), drops its own, becomes dumpable again (an exec
 *          with file capabilities made it non-dumpable), closes every fd
 *          but 0-2 and parks in pause(). A husk that fails kills the
 *          children it made.
 *
 * ctl lines (outer -> crest), see helper/README.md:
 *   husk <pid>                 one per --pid, in order: the husk exists
 *   thread <tid>               one per --tid, in order
 *   cycled <count> <usec>      cycle: IDs used up, and how long it took
 *   ready                      all of it exists; nothing holds a capability
 *   error <ID> <ERRNO>         creating ID failed (EEXIST: taken; EINVAL:
 *                              beyond pid_max; EPERM: no capability;
 *                              ETIMEDOUT: cycling ran out of time)
 *   exit <rawWaitStatus>       the husk (by then the restored process) ended
 *
 * Exit status: the husk's (exit code, or death by the same signal); 2 usage
 * error; 3 creation failed (after an `error` line); 4 refused to run (the
 * caller or the installation is not what this program accepts).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/futex.h>
#include <linux/nsfs.h>
#include <linux/sched.h> /* struct clone_args */
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define EXIT_USAGE 2
#define EXIT_SETUP 3
#define EXIT_REFUSED 4
/* IDs below 300 are handed out only while the system boots (the counter
   wraps to RESERVED_PIDS): no process of a user ever had one, and choosing
   one would reach what PID cycling never can. */
#define MIN_ID 300
#define MAX_ID 4194304 /* PID_MAX_LIMIT */
#define MAX_TIDS 4096
#define MAX_PROCS 512
#define CAP_CR 40 /* CAP_CHECKPOINT_RESTORE */
#define THREAD_STACK (64 * 1024)
#define DEFAULT_WITHIN_MS 30000
#define MAX_WITHIN_MS 600000

static const char usage_text[] =
    "usage: crest-pidhelper husk  --ctl FD --pid PID [--setsid] [--tid TID ...] [--pid PID:PARENT [--setsid] [--tid TID ...] ...]\n"
    "       crest-pidhelper cycle --ctl FD --pid PID [--setsid] [--tid TID ...] [--pid PID:PARENT ...] [--within MS]\n"
    "       crest-pidhelper probe\n"
    "       crest-pidhelper --help\n"
    "PID and TIDs: distinct, 300..4194304; a --tid belongs to the --pid before it; PARENT is an\n"
    "earlier --pid. At most 512 --pid and 4096 --tid. FD: an open writable fd >= 3.\n";

/* ---- raw system calls --------------------------------------------------
   Threads made here share the main thread's TLS (no CLONE_SETTLS), so code
   running in them must not touch errno or any other glibc state: they use
   this instead of syscall(3). Returns the kernel's value (-errno on error). */
static long raw6(long nr, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#define raw(nr, a, b, c) raw6((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)

/* ---- small utilities ------------------------------------------------- */

static _Noreturn void die(const char *what)
{
	fprintf(stderr, "crest-pidhelper: %s: %s\n", what, strerror(errno));
	_exit(EXIT_SETUP);
}

static _Noreturn void usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("crest-pidhelper: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fputs(usage_text, stderr);
	exit(EXIT_USAGE);
}

static _Noreturn void refuse(const char *fmt, ...)
{
	va_list ap;

	fputs("crest-pidhelper: refused: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_REFUSED);
}

static int64_t now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* ---- capabilities ----------------------------------------------------- */

/* This thread's capability sets (64-bit masks). 0 or -errno. Raw: safe in
   any thread. */
static long caps_get(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	long r = raw(SYS_capget, &h, d, 0);

	if (r < 0)
		return r;
	*eff = d[0].effective | (uint64_t)d[1].effective << 32;
	*prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
	*inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
	return 0;
}

static long caps_set(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	d[0].effective = (uint32_t)eff;
	d[1].effective = (uint32_t)(eff >> 32);
	d[0].permitted = (uint32_t)prm;
	d[1].permitted = (uint32_t)(prm >> 32);
	d[0].inheritable = (uint32_t)inh;
	d[1].inheritable = (uint32_t)(inh >> 32);
	return raw(SYS_capset, &h, d, 0);
}

/* Every capability of the calling thread gone for good: effective,
   permitted (so none can be raised again) and inheritable cleared, ambient
   cleared, then read back. Capabilities are per thread in Linux: every
   thread calls this itself. 0 or -errno. Raw: safe in any thread. */
static long drop_all_caps(void)
{
	uint64_t e, p, i;
	long r = caps_set(0, 0, 0);

	if (r < 0)
		return r;
	r = raw6(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0);
	if (r < 0)
		return r;
	r = caps_get(&e, &p, &i);
	if (r < 0)
		return r;
	if (e | p | i)
		return -EPERM;
	for (long cap = 0; cap < 64; cap++) {
		r = raw6(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0, 0);
		if (r == 1)
			return -EPERM;
		if (r == -EINVAL)
			break; /* beyond the last capability this kernel knows */
	}
	return 0;
}

static int holds_cr(void)
{
	uint64_t e, p, i;

	return caps_get(&e, &p, &i) == 0 && (e >> CAP_CR) & 1;
}

/* ---- the caller and the installation ----------------------------------- */

/* fds 0-2 open (else /dev/null), so that nothing we open lands there and
   no message of ours goes into a file the caller left at fd 1 or 2 by
   accident. */
static void sane_stdio(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		int n = open("/dev/null", O_RDWR);
		if (n != fd)
			_exit(EXIT_SETUP);
	}
}

/* The checks that make a file-capability binary safe to hand to anyone. */
static void check_caller(void)
{
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	struct stat st;

	/* A husk belongs to the caller: one uid, one gid, nothing borrowed
	   from a set-id program that called us. */
	if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0)
		die("getresuid");
	if (ru != eu || eu != su || rg != eg || eg != sg)
		refuse("real, effective and saved user and group ids differ (uid %u/%u/%u gid %u/%u/%u): run it as yourself",
		       (unsigned)ru, (unsigned)eu, (unsigned)su, (unsigned)rg, (unsigned)eg, (unsigned)sg);
	/* A binary carrying file capabilities must be one only root can change. */
	if (getxattr("/proc/self/exe", "security.capability", NULL, 0) <= 0)
		return;
	if (stat("/proc/self/exe", &st) < 0)
		die("stat /proc/self/exe");
	if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
		refuse("this binary carries file capabilities but is %s; install it owned by root, mode 0755 (chown root:root, chmod 0755, then setcap again)",
		       st.st_uid != 0 ? "not owned by root" : "writable by group or others");
}

/* The husk is made in the pid namespace we live in, and only if our own
   user namespace owns it: never among the processes of a namespace some
   other user made. 0 or errno (EPERM: foreign). */
static int check_pidns(void)
{
	struct stat ours, owner, user, kids;
	int pidns, own, err = 0;

	pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
	if (pidns < 0)
		return errno;
	/* The kernel refuses (EPERM) an owner that is not our user namespace
	   or one of its ancestors. */
	own = ioctl(pidns, NS_GET_USERNS);
	if (own < 0)
		err = errno;
	else if (fstat(own, &owner) < 0 || stat("/proc/self/ns/user", &user) < 0)
		err = errno;
	else if (owner.st_dev != user.st_dev || owner.st_ino != user.st_ino)
		err = EPERM;
	/* Children go where we are (no unshare(CLONE_NEWPID) pending). */
	if (!err && (fstat(pidns, &ours) < 0 || stat("/proc/self/ns/pid_for_children", &kids) < 0))
		err = errno;
	else if (!err && (ours.st_dev != kids.st_dev || ours.st_ino != kids.st_ino))
		err = EPERM;
	if (own >= 0)
		close(own);
	close(pidns);
	return err;
}

/* ---- signals ------------------------------------------------------------ */

static volatile pid_t forward_to;

/* Signals sent to us by a process go on to the husk; our own (SIGPIPE of a
   ctl write) and kernel-generated ones (the terminal's already reach the
   husk through its process group) do not. */
static void forward_handler(int sig, siginfo_t *si, void *ctx)
{
	int saved = errno;

	(void)ctx;
	if (si->si_code <= 0 && forward_to > 0 && si->si_pid != getpid())
		kill(forward_to, sig);
	errno = saved;
}

/* handler NULL: every disposition back to default (for the husk). */
static int set_all_signals(void (*handler)(int, siginfo_t *, void *))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	if (handler) {
		sa.sa_sigaction = handler;
		sa.sa_flags = SA_SIGINFO | SA_RESTART;
		sigfillset(&sa.sa_mask);
	} else {
		sa.sa_handler = SIG_DFL;
	}
	for (int sig = 1; sig < NSIG; sig++) {
		if (!settable_signal(sig))
			continue;
		if (sig == SIGCHLD && handler)
			continue;
		if (sigaction(sig, &sa, NULL) < 0)
			return -1;
	}
	if (handler) { /* an inherited SIG_IGN would make the kernel reap the husk */
		struct sigaction dfl;
		memset(&dfl, 0, sizeof dfl);
		dfl.sa_handler = SIG_DFL;
		return sigaction(SIGCHLD, &dfl, NULL);
	}
	return 0;
}

/* ---- the request -------------------------------------------------------- */

/* One process of the tree: its PID, its parent's (0 for the top), and its
   threads' TIDs, tids[first .. first+ntids) of the request. */
struct proc {
	pid_t pid;
	pid_t ppid;
	int first;
	int ntids;
	int setsid; /* leads a new session, made before its children */
};

struct request {
	struct proc procs[MAX_PROCS];
	int nprocs;
	pid_t tids[MAX_TIDS];
	int ntids;
	int ctl;
	int cycle;
	long within_ms;
};

static pid_t parse_id(const char *opt, const char *s)
{
	long v;

	if (parse_uint(s, LONG_MAX / 10, &v) < 0)
		usage_error("%s '%s': not a decimal number", opt, s);
	if (v < MIN_ID || v > MAX_ID)
		usage_error("%s %ld: must be between %d and %d (lower IDs belong to the system's boot; higher ones do not exist)",
			    opt, v, MIN_ID, MAX_ID);
	return (pid_t)v;
}

static int parse_ctl(const char *s)
{
	long v;
	int fl;

	if (parse_uint(s, INT_MAX, &v) < 0)
		usage_error("--ctl '%s': not a file descriptor number", s);
	if (v < 3)
		usage_error("--ctl %ld: must be 3 or more (0-2 are the husk's)", v);
	if (fcntl((int)v, F_GETFD) < 0)
		usage_error("--ctl %ld: not an open file descriptor", v);
	fl = fcntl((int)v, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY)
		usage_error("--ctl %ld: not open for writing", v);
	if (fcntl((int)v, F_SETFD, FD_CLOEXEC) < 0)
		die("fcntl --ctl");
	return (int)v;
}

/* "--pid P" (the first) or "--pid P:PARENT" (every later one). */
static void parse_proc(struct request *rq, const char *s)
{
	char buf[32];
	const char *colon = strchr(s, ':');
	struct proc *p;

	if (rq->nprocs == MAX_PROCS)
		usage_error("more than %d --pid", MAX_PROCS);
	p = &rq->procs[rq->nprocs];
	p->first = rq->ntids;
	p->ntids = 0;
	p->ppid = 0;
	p->setsid = 0;
	if (!colon) {
		if (rq->nprocs > 0)
			usage_error("--pid %s: every --pid after the first names its parent (--pid PID:PARENT)", s);
		p->pid = parse_id("--pid", s);
	} else {
		if (rq->nprocs == 0)
			usage_error("--pid %s: the first --pid is the top of the tree and has no parent here", s);
		if ((size_t)(colon - s) >= sizeof buf)
			usage_error("--pid '%s': not a decimal number", s);
		memcpy(buf, s, (size_t)(colon - s));
		buf[colon - s] = '\0';
		p->pid = parse_id("--pid", buf);
		p->ppid = parse_id("--pid PARENT", colon + 1);
		int found = 0;
		for (int i = 0; i < rq->nprocs; i++)
			found |= rq->procs[i].pid == p->ppid;
		if (!found)
			usage_error("--pid %s: parent %d is not an earlier --pid", s, (int)p->ppid);
	}
	rq->nprocs++;
}

static void parse_request(int argc, char **argv, struct request *rq)
{
	const char *verb = argv[1];

	rq->ctl = -1;
	rq->within_ms = -1;
	for (int i = 2; i < argc; i++) {
		const char *opt = argv[i];
		if (strcmp(opt, "--setsid") == 0) {
			if (rq->nprocs == 0)
				usage_error("%s: --setsid before any --pid (it is about the --pid before it)", verb);
			if (rq->procs[rq->nprocs - 1].setsid)
				usage_error("%s: --setsid given twice for --pid %d", verb, (int)rq->procs[rq->nprocs - 1].pid);
			rq->procs[rq->nprocs - 1].setsid = 1;
			continue;
		}
		if (strcmp(opt, "--ctl") != 0 && strcmp(opt, "--pid") != 0 && strcmp(opt, "--tid") != 0 &&
		    strcmp(opt, "--within") != 0)
			usage_error("%s: unexpected argument '%s'", verb, opt);
		if (++i == argc)
			usage_error("%s: %s needs a value", verb, opt);
		if (strcmp(opt, "--ctl") == 0) {
			if (rq->ctl >= 0)
				usage_error("%s: --ctl given twice", verb);
			rq->ctl = parse_ctl(argv[i]);
		} else if (strcmp(opt, "--pid") == 0) {
			parse_proc(rq, argv[i]);
		} else if (strcmp(opt, "--tid") == 0) {
			if (rq->nprocs == 0)
				usage_error("%s: --tid %s before any --pid (a --tid is a thread of the --pid before it)", verb, argv[i]);
			if (rq->ntids == MAX_TIDS)
				usage_error("%s: more than %d --tid", verb, MAX_TIDS);
			rq->tids[rq->ntids++] = parse_id("--tid", argv[i]);
			rq->procs[rq->nprocs - 1].ntids++;
		} else {
			long v;
			if (!rq->cycle)
				usage_error("%s: --within is for cycle only", verb);
			if (rq->within_ms >= 0)
				usage_error("%s: --within given twice", verb);
			if (parse_uint(argv[i], LONG_MAX / 10, &v) < 0 || v < 1 || v > MAX_WITHIN_MS)
				usage_error("--within '%s': milliseconds between 1 and %d", argv[i], MAX_WITHIN_MS);
			rq->within_ms = v;
		}
	}
	if (rq->ctl < 0)
		usage_error("%s: --ctl FD is required", verb);
	if (rq->nprocs == 0)
		usage_error("%s: --pid PID is required", verb);
	for (int i = 0; i < rq->nprocs; i++)
		for (int j = 0; j < i; j++)
			if (rq->procs[j].pid == rq->procs[i].pid)
				usage_error("--pid %d: given twice", (int)rq->procs[i].pid);
	for (int i = 0; i < rq->ntids; i++) {
		for (int k = 0; k < rq->nprocs; k++)
			if (rq->tids[i] == rq->procs[k].pid)
				usage_error("--tid %d: the same as a --pid (a main thread's TID is its PID)", (int)rq->tids[i]);
		for (int j = 0; j < i; j++)
			if (rq->tids[j] == rq->tids[i])
				usage_error("--tid %d: given twice", (int)rq->tids[i]);
	}
	if (rq->within_ms < 0)
		rq->within_ms = DEFAULT_WITHIN_MS;
}

/* ---- messages husk -> outer ---------------------------------------------- */

enum { MSG_READY = 1, MSG_ERROR };

struct msg {
	int32_t kind;
	int32_t id;  /* ERROR: the ID that failed */
	int32_t err; /* ERROR: errno */
	int32_t pad;
	int64_t count; /* cycle: IDs used up (husk side) */
	int64_t usec;
};

static int ctl_fd = -1;

static void ctl_line(const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	/* A reader that went away is not our problem: the husk lives on. */
	if (n > 0 && (size_t)n < sizeof buf)
		(void)write_all(ctl_fd, buf, (size_t)n);
}

/* ---- ID cycling (the cycle verb; no privilege involved) ------------------ */

struct cycling {
	pid_t pid_max;
	int64_t deadline_us;
	int64_t count;
};

/* Used by the kernel as a PID right now (a process or thread, a zombie, or
   the id of a process group that outlived its leader). */
static int id_taken(pid_t id)
{
	return (kill(id, 0) == 0 || errno != ESRCH) || (kill(-id, 0) == 0 || errno != ESRCH);
}

/* Uses up one ID: a thread that exits at once, touching no memory (so it
   may run on our own stack pointer; every signal is blocked, so no frame is
   ever pushed there). Returns its TID, or -errno. */
static long burn_one(void)
{
	long ret;
	register long r10 __asm__("r10") = 0;
	register long r8 __asm__("r8") = 0;

	__asm__ volatile("syscall\n\t"
			 "test %%rax,%%rax\n\t"
			 "jnz 1f\n\t"
			 "mov $60,%%eax\n\t" /* SYS_exit */
			 "xor %%edi,%%edi\n\t"
			 "syscall\n\t"
			 "hlt\n"
			 "1:"
			 : "=a"(ret)
			 : "0"((long)SYS_clone),
			   "D"((long)(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)),
			   "S"(0L), "d"(0L), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}

/* True when the kernel's next ID after `last` is `want`: every ID strictly
   between them (counting the wrap from pid_max-1 to 300) is taken. */
static int next_is(const struct cycling *c, pid_t last, pid_t want)
{
	long gap = want > last ? want - last : (c->pid_max - last) + (want - MIN_ID);

	if (gap > 64)
		return 0;
	for (pid_t id = last + 1; id != want; id++) {
		if (id >= c->pid_max)
			id = MIN_ID;
		if (id == want)
			break;
		if (!id_taken(id))
			return 0;
	}
	return 1;
}

/* Uses up IDs until the next one handed out should be `want`. 0, or -1
   with errno: EEXIST (want is taken), ETIMEDOUT, or clone's. */
static int cycle_to(struct cycling *c, pid_t want)
{
	/* Set when one of our own burners got `want` (another process took
	   the ID before it): that thread may linger a while before it runs its
	   exit, and is not taken for a holder for the next 8 checks. */
	int ours = 0;

	for (int round = 0;; round++) {
		if ((round & 1023) == 0) {
			if (!id_taken(want))
				ours = 0;
			else if (ours-- <= 0) {
				errno = EEXIST;
				return -1;
			}
			if (now_us() > c->deadline_us) {
				errno = ETIMEDOUT;
				return -1;
			}
		}
		long last = burn_one();
		if (last == -EAGAIN || last == -EINTR) {
			sched_yield();
			continue;
		}
		if (last < 0) {
			errno = (int)-last;
			return -1;
		}
		c->count++;
		if (last == want)
			ours = 8;
		else if (next_is(c, (pid_t)last, want))
			return 0;
	}
}

/* Waits (up to 5 s) until this process has exactly `n` threads: burners
   that have not yet run their exit must be gone before crest takes the
   husk over (their code is about to be unmapped). 0 or -1/ETIMEDOUT. */
static int await_threads(int n)
{
	const struct timespec pause_100us = { 0, 100000 };

	for (int round = 0; round < 50000; round++) {
		int count = 0;
		DIR *d = opendir("/proc/self/task");
		struct dirent *e;

		if (!d)
			return -1;
		while ((e = readdir(d)) != NULL)
			count += e->d_name[0] != '.';
		closedir(d);
		if (count == n)
			return 0;
		nanosleep(&pause_100us, NULL);
	}
	errno = ETIMEDOUT;
	return -1;
}

static pid_t read_pid_max(void)
{
	char buf[32];
	long v;
	int fd = open("/proc/sys/kernel/pid_max", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return MAX_ID;
	buf[n] = '\0';
	if (buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	return parse_uint(buf, MAX_ID, &v) == 0 ? (pid_t)v : MAX_ID;
}

/* ---- threads of the husk -------------------------------------------------- */

enum { VERDICT_NONE = 0, VERDICT_KEEP, VERDICT_EXIT };

/* Shared between the husk's main thread and one new thread. */
struct slot {
	int32_t verdict; /* main -> thread */
	int32_t status;  /* thread -> main: 1 = capabilities dropped, parked; <0 -errno */
	int32_t alive;   /* CLONE_CHILD_SETTID/CLEARTID: 0 once the thread is gone */
	int32_t pad;
};

static void futex_wait(int32_t *word, int32_t val)
{
	raw6(SYS_futex, (long)word, FUTEX_WAIT_PRIVATE, val, 0, 0, 0);
}

static void futex_wake(int32_t *word)
{
	raw6(SYS_futex, (long)word, FUTEX_WAKE_PRIVATE, INT_MAX, 0, 0, 0);
}

/* A new thread of the husk. It shares the main thread's TLS: raw calls only.
   Kept: it drops every capability, says so, and parks. */
static void thread_start(void *arg)
{
	struct slot *s = arg;
	int32_t v;

	while ((v = __atomic_load_n(&s->verdict, __ATOMIC_ACQUIRE)) == VERDICT_NONE)
		futex_wait(&s->verdict, VERDICT_NONE);
	if (v == VERDICT_KEEP) {
		long r = drop_all_caps();
		__atomic_store_n(&s->status, r == 0 ? 1 : (int32_t)r, __ATOMIC_RELEASE);
		futex_wake(&s->status);
		if (r == 0)
			for (;;)
				raw(SYS_pause, 0, 0, 0);
	}
	raw(SYS_exit, 0, 0, 0);
}

/* clone3 for a thread: the child starts on `args->stack` and calls fn(arg),
   which never returns. Returns the TID or -errno. */
static long clone3_thread(struct clone_args *args, void (*fn)(void *), void *arg)
{
	long ret;
	register void (*r12)(void *) __asm__("r12") = fn;
	register void *r13 __asm__("r13") = arg;

	__asm__ volatile("syscall\n\t"
			 "test %%rax,%%rax\n\t"
			 "jnz 1f\n\t"
			 "xor %%ebp,%%ebp\n\t"
			 "mov %%r13,%%rdi\n\t"
			 "call *%%r12\n\t"
			 "hlt\n"
			 "1:"
			 : "=a"(ret)
			 : "0"((long)SYS_clone3), "D"(args), "S"(sizeof *args), "r"(r12), "r"(r13)
			 : "rcx", "r11", "memory");
	return ret;
}

/* Makes one thread with TID `tid` in the husk, parked without capabilities.
   cycle NULL: clone3 set_tid. Otherwise: cycle until the counter is right,
   and let a thread that got another TID go. 0 or -1/errno. */
static int make_thread(pid_t tid, struct cycling *cycle)
{
	const uint64_t flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
			       CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID;
	char *stack = mmap(NULL, THREAD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	struct slot *s = (struct slot *)stack; /* the stack grows down from the other end */
	struct clone_args args;
	pid_t want = tid;
	long got;

	if (stack == MAP_FAILED)
		return -1;
	for (;;) {
		memset(s, 0, sizeof *s);
		s->alive = -1;
		memset(&args, 0, sizeof args);
		args.flags = flags;
		args.child_tid = (uint64_t)(uintptr_t)&s->alive;
		args.stack = (uint64_t)(uintptr_t)(stack + sizeof *s);
		args.stack_size = THREAD_STACK - sizeof *s;
		if (!cycle) {
			args.set_tid = (uint64_t)(uintptr_t)&want;
			args.set_tid_size = 1;
		} else if (cycle_to(cycle, tid) < 0) {
			return -1;
		}
		got = clone3_thread(&args, thread_start, s);
		if (got < 0) {
			errno = (int)-got;
			return -1;
		}
		if (cycle)
			cycle->count++;
		if (got == tid)
			break;
		/* Someone took the ID first: let this thread go, wait until it
		   is gone (its stack is reused), and cycle on. */
		__atomic_store_n(&s->verdict, VERDICT_EXIT, __ATOMIC_RELEASE);
		futex_wake(&s->verdict);
		int32_t a;
		while ((a = __atomic_load_n(&s->alive, __ATOMIC_ACQUIRE)) != 0)
			futex_wait(&s->alive, a);
	}
	__atomic_store_n(&s->verdict, VERDICT_KEEP, __ATOMIC_RELEASE);
	futex_wake(&s->verdict);
	int32_t st;
	while ((st = __atomic_load_n(&s->status, __ATOMIC_ACQUIRE)) == 0)
		futex_wait(&s->status, 0);
	if (st != 1) {
		errno = -st;
		return -1;
	}
	return 0;
}

/* ---- the husk ------------------------------------------------------------- */

static _Noreturn void husk_main(const struct request *rq, int idx, int up, struct cycling *cycle);

/* The process creating a husk: the husk checks it is still its parent. */
static pid_t husk_parent;

/* Creates the husk of procs[idx] as a child of the caller: set_tid, or
   cycling until the counter hands out its PID (a child that got another
   one exits at once). Returns its PID with *rd the read end of its report
   pipe, or -1/errno. */
static pid_t start_husk(const struct request *rq, int idx, struct cycling *cycle, int *rd)
{
	pid_t want = rq->procs[idx].pid, husk;
	int p[2], st, err;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	husk_parent = getpid();
	for (;;) {
		if (cycle && cycle_to(cycle, want) < 0) {
			husk = -1;
			break;
		}
		husk = clone3_pid(cycle ? 0 : want);
		if (husk == 0) {
			if (cycle && getpid() != want)
				_exit(0);
			close(p[0]);
			husk_main(rq, idx, p[1], cycle);
		}
		if (husk < 0 || !cycle)
			break;
		cycle->count++;
		if (husk == want)
			break;
		wait_for(husk, &st);
	}
	err = errno;
	close(p[1]);
	if (husk < 0) {
		close(p[0]);
		errno = err;
		return -1;
	}
	*rd = p[0];
	return husk;
}

/* Reads the report of husk procs[idx] (and its subtree) from rd, which it
   closes: 0 with *m its MSG_READY, or -1 with m->id, m->err saying what
   failed (ECHILD: it died before reporting). */
static int await_husk(const struct request *rq, int idx, int rd, struct msg *m)
{
	ssize_t n = read_full(rd, m, sizeof *m);

	close(rd);
	if (n == (ssize_t)sizeof *m && m->kind == MSG_READY)
		return 0;
	if (n != (ssize_t)sizeof *m) {
		m->kind = MSG_ERROR;
		m->id = rq->procs[idx].pid;
		m->err = ECHILD;
	}
	return -1;
}

static void kill_husks(const pid_t *pids, int n)
{
	int st;

	for (int i = 0; i < n; i++) {
		kill(pids[i], SIGKILL);
		wait_for(pids[i], &st);
	}
}

static _Noreturn void husk_fail(int up, pid_t id, int err, const pid_t *kids, int nkids)
{
	struct msg m = { MSG_ERROR, id, err, 0, 0, 0 };

	kill_husks(kids, nkids);
	(void)write_all(up, &m, sizeof m);
	_exit(EXIT_SETUP);
}

/* The life of the husk of procs[idx]: its threads, its child husks (each
   reports once its whole subtree exists), then no capability anywhere,
   then dumpable (the caller's crest must be able to trace it), fds 0-2
   only, parked. Every signal stays blocked until the very end. */
static _Noreturn void husk_main(const struct request *rq, int idx, int up, struct cycling *cycle)
{
	const struct proc *me = &rq->procs[idx];
	struct msg m = { MSG_READY, 0, 0, 0, 0, 0 }, km;
	pid_t kids[MAX_PROCS] = { 0 };
	int nkids = 0;
	int64_t kid_count = 0;
	long r;

	/* Until crest takes it over, a husk goes with its parent: nothing of
	   a failed restore stays parked. crest sets the process's own
	   parent-death signal back (kinds/process.ts). */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != husk_parent)
		_exit(EXIT_SETUP);
	if (cycle)
		cycle->count = 0; /* the parent counted what it used up before the fork */
	if (set_all_signals(NULL) < 0)
		husk_fail(up, me->pid, errno, kids, nkids);
	if (me->setsid && setsid() < 0)
		husk_fail(up, me->pid, errno, kids, nkids);
	/* Threads before children: a process usually made its threads before
	   it forked, so their IDs come first in the counter's order, and
	   cycling reaches each ID without going round again. */
	for (int i = 0; i < me->ntids; i++)
		if (make_thread(rq->tids[me->first + i], cycle) < 0)
			husk_fail(up, rq->tids[me->first + i], errno, kids, nkids);
	for (int j = idx + 1; j < rq->nprocs; j++) {
		int rd;
		if (rq->procs[j].ppid != me->pid)
			continue;
		pid_t kid = start_husk(rq, j, cycle, &rd);
		if (kid < 0)
			husk_fail(up, rq->procs[j].pid, errno, kids, nkids);
		kids[nkids++] = kid;
		if (await_husk(rq, j, rd, &km) < 0)
			husk_fail(up, km.id, km.err, kids, nkids);
		kid_count += km.count;
	}
	if (cycle && await_threads(1 + me->ntids) < 0)
		husk_fail(up, me->pid, errno, kids, nkids);
	r = drop_all_caps();
	if (r < 0)
		husk_fail(up, me->pid, (int)-r, kids, nkids);
	/* Only now, with no capability left in any thread, may the caller
	   trace us (and so run code in us). */
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
		husk_fail(up, me->pid, errno, kids, nkids);
	if (cycle)
		m.count = cycle->count + kid_count;
	if (unblock_all() < 0)
		husk_fail(up, me->pid, errno, kids, nkids);
	if (write_all(up, &m, sizeof m) < 0)
		_exit(EXIT_SETUP);
	/* Closing the pipe tells the parent we are about to park; the outer
	   reports "ready" once /proc shows every thread of the tree in pause(). */
	if (close_range(3, ~0U, 0) < 0)
		_exit(EXIT_SETUP);
	for (;;)
		pause();
}

/* ---- outer ----------------------------------------------------------------- */

/* Whether task `tid` of `pid` sits in pause() (/proc/PID/task/TID/syscall
   starts with its number, 34), so that crest finds it parked right after
   a `syscall` instruction. */
static int parked(pid_t pid, pid_t tid)
{
	char path[64], buf[32];
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "/proc/%d/task/%d/syscall", (int)pid, (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strncmp(buf, "34 ", 3) == 0;
}

/* Waits (up to 5 s) until every husk and each of its threads is parked.
   0, or -1/ETIMEDOUT. */
static int await_parked(const struct request *rq)
{
	const struct timespec ms = { 0, 1000000 };

	for (int round = 0; round < 5000; round++) {
		int all = 1;
		for (int k = 0; all && k < rq->nprocs; k++) {
			const struct proc *p = &rq->procs[k];
			all = parked(p->pid, p->pid);
			for (int i = 0; all && i < p->ntids; i++)
				all = parked(p->pid, rq->tids[p->first + i]);
		}
		if (all)
			return 0;
		nanosleep(&ms, NULL);
	}
	errno = ETIMEDOUT;
	return -1;
}

static _Noreturn void mirror_status(int status)
{
	if (WIFEXITED(status))
		exit(WEXITSTATUS(status));
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);
		sigset_t one;
		struct sigaction sa;

		/* Do not leave a core file of the helper behind. */
		prctl(PR_SET_DUMPABLE, 0);
		fflush(NULL);
		block_all();
		if (sig != SIGKILL && sig != SIGSTOP) {
			memset(&sa, 0, sizeof sa);
			sa.sa_handler = SIG_DFL;
			sigaction(sig, &sa, NULL);
		}
		kill(getpid(), sig);
		sigemptyset(&one);
		sigaddset(&one, sig);
		set_mask(SIG_UNBLOCK, &one);
		_exit(128 + sig);
	}
	_exit(EXIT_SETUP);
}

/* Kills the tree: the top husk, our own child; every other husk dies with
   its parent (PR_SET_PDEATHSIG). Never a kill by a PID of the request: that
   PID may be someone else's process (it was taken). */
static void kill_tree(pid_t top)
{
	int st;

	kill(top, SIGKILL);
	wait_for(top, &st);
}

/* Creates the top husk (with the outer's capability, if any; it creates
   the rest of the tree), drops every capability, reports, and waits for
   the top husk's end. */
static int outer_main(struct request *rq)
{
	struct cycling cyc, *cycle = NULL;
	int rd = -1, st;
	pid_t husk;
	struct msg m;
	long r;
	int64_t t0 = now_us();
	const pid_t top = rq->procs[0].pid;

	ctl_fd = rq->ctl;
	if (block_all() < 0 || set_all_signals(forward_handler) < 0)
		die("signal setup");
	if (rq->cycle) {
		cyc.pid_max = read_pid_max();
		cyc.deadline_us = t0 + (int64_t)rq->within_ms * 1000;
		cyc.count = 0;
		cycle = &cyc;
		pid_t bad = 0;
		for (int k = 0; k < rq->nprocs && !bad; k++)
			if (rq->procs[k].pid >= cyc.pid_max)
				bad = rq->procs[k].pid;
		for (int i = 0; i < rq->ntids && !bad; i++)
			if (rq->tids[i] >= cyc.pid_max)
				bad = rq->tids[i];
		if (bad) {
			fprintf(stderr, "crest-pidhelper: cannot create %d: beyond pid_max %d\n", (int)bad, (int)cyc.pid_max);
			ctl_line("error %d %s\n", (int)bad, errno_name(EINVAL));
			return EXIT_SETUP;
		}
	}
	husk = start_husk(rq, 0, cycle, &rd);
	/* The outer needs no capability from here on. */
	r = drop_all_caps();
	if (husk < 0 || r < 0) {
		int err = husk < 0 ? errno : (int)-r;
		if (husk > 0) {
			close(rd);
			kill_tree(husk);
		}
		fprintf(stderr, "crest-pidhelper: cannot create process %d: %s\n", (int)top, strerror(err));
		ctl_line("error %d %s\n", (int)top, errno_name(err));
		return EXIT_SETUP;
	}
	if (await_husk(rq, 0, rd, &m) < 0) {
		int is_proc = 0;
		for (int k = 0; k < rq->nprocs; k++)
			is_proc |= rq->procs[k].pid == m.id;
		kill_tree(husk);
		fprintf(stderr, "crest-pidhelper: cannot create %s %d: %s\n", is_proc ? "process" : "thread", (int)m.id,
			strerror(m.err));
		ctl_line("error %d %s\n", (int)m.id, errno_name(m.err));
		return EXIT_SETUP;
	}
	if (await_parked(rq) < 0) {
		int err = errno;
		kill_tree(husk);
		fprintf(stderr, "crest-pidhelper: process %d did not park: %s\n", (int)husk, strerror(err));
		ctl_line("error %d %s\n", (int)husk, errno_name(err));
		return EXIT_SETUP;
	}
	for (int k = 0; k < rq->nprocs; k++)
		ctl_line("husk %d\n", (int)rq->procs[k].pid);
	for (int i = 0; i < rq->ntids; i++)
		ctl_line("thread %d\n", (int)rq->tids[i]);
	if (cycle)
		ctl_line("cycled %lld %lld\n", (long long)(cycle->count + m.count), (long long)(now_us() - t0));
	ctl_line("ready\n");

	forward_to = husk;
	if (unblock_all() < 0)
		die("sigprocmask");
	if (wait_for(husk, &st) < 0)
		die("waitpid");
	forward_to = 0;
	ctl_line("exit %d\n", st);
	mirror_status(st);
}

/* ---- probe ------------------------------------------------------------------ */

/* capability: whether CAP_CHECKPOINT_RESTORE is effective here.
   set_tid: clone3 asking for our own (taken) PID: EEXIST means the kernel
   accepted the capability and only then found the PID taken; nothing is
   created either way. pidns: whether husks could be made here at all. */
static int probe_main(void)
{
	int have = holds_cr();
	int pidns = check_pidns();
	pid_t got = clone3_pid(getpid());
	int e = got < 0 ? errno : 0;

	if (got == 0)
		_exit(0);
	if (got > 0) {
		int st;
		wait_for(got, &st);
	}
	if (drop_all_caps() < 0)
		die("drop capabilities");
	printf("capability %s\n", have ? "yes" : "no");
	printf("set_tid %s\n", e == EEXIST ? "ok" : errno_name(e ? e : EINVAL));
	printf("pidns %s\n", pidns ? errno_name(pidns) : "ok");
	if (fflush(stdout) == EOF)
		die("write stdout");
	return 0;
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	static struct request rq;
	uint64_t e, p, i;
	int pidns;

	sane_stdio();
	if (caps_get(&e, &p, &i) < 0)
		die("capget");
	if (argc >= 2 && strcmp(argv[1], "cycle") == 0) {
		/* Cycling needs no privilege: shed all of it before anything else. */
		if (drop_all_caps() < 0)
			die("drop capabilities");
		e = p = i = 0;
	} else {
		/* Keep at most CAP_CHECKPOINT_RESTORE, and only in this thread. */
		uint64_t keep = p & (1ULL << CAP_CR);
		if (caps_set(e & keep, keep, 0) < 0)
			die("capset");
	}
	check_caller();

	if (argc < 2)
		usage_error("missing verb");
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		if (argc != 2)
			usage_error("--help takes no arguments");
		fputs(usage_text, stdout);
		return 0;
	}
	if (strcmp(argv[1], "probe") == 0) {
		if (argc != 2)
			usage_error("probe takes no arguments");
		return probe_main();
	}
	if (strcmp(argv[1], "husk") != 0 && strcmp(argv[1], "cycle") != 0)
		usage_error("unknown verb '%s'", argv[1]);
	rq.cycle = strcmp(argv[1], "cycle") == 0;
	parse_request(argc, argv, &rq);
	ctl_fd = rq.ctl;

	if (!rq.cycle) {
		if (!holds_cr()) {
			char self[PATH_MAX];
			ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
			self[n > 0 ? n : 0] = '\0';
			fprintf(stderr,
				"crest-pidhelper: it does not hold CAP_CHECKPOINT_RESTORE, so it cannot choose PIDs; an administrator grants it with: sudo setcap cap_checkpoint_restore+ep %s\n",
				self);
			ctl_line("error %d %s\n", (int)rq.procs[0].pid, errno_name(EPERM));
			return EXIT_REFUSED;
		}
		pidns = check_pidns();
		if (pidns) {
			fprintf(stderr,
				"crest-pidhelper: refused: this process's pid namespace is not owned by its user namespace (%s); PIDs are chosen only where you live\n",
				errno_name(pidns));
			ctl_line("error %d %s\n", (int)rq.procs[0].pid, errno_name(EPERM));
			return EXIT_REFUSED;
		}
	}
	return outer_main(&rq);
}
