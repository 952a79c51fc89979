/*
 * crest-helper: the small native helper of crest.
 *
 * It creates a user+pid+mount namespace owned by the caller, starts a job
 * (verb "run") or parks placeholder processes with chosen PIDs (verb
 * "restore") inside it, reaps everything in the namespace and forwards
 * signals.  All ptrace work and all policy live in the Node side; this
 * program has fixed verbs, strict argument parsing, no configuration and
 * never runs a shell.
 *
 *   crest-helper run [--ctl FD] [--net] -- CMD [ARGS...]
 *   crest-helper restore [--ctl FD] [--net] --task PID[:PPID] [--task ...]
 *   crest-helper probe
 *
 * --net: the namespaces include a new network namespace, whose loopback
 * interface init brings up (it is the only interface).
 *
 * Processes:
 *   outer  the process started by the caller, in the caller's namespaces;
 *          writes the id maps, talks on the ctl fd, forwards signals to init,
 *          mirrors the job's termination.
 *   init   PID 1 of the new pid namespace; reaps, forwards signals to the
 *          job, reports the job's wait status to the outer.
 *   job    PID 2 (run) or the first top-level --task (restore).
 *   husks  (restore) placeholders parked in pause() with the requested PIDs.
 *
 * ctl lines (outer -> Node), see helper/README.md:
 *   started <initPid> <jobPid>      run: job forked
 *   husk <innerPid> <outerPid>      restore: one per --task, in order
 *   ready <initPid>                 restore: all husks exist
 *   error <PID> <ERRNO>             restore: creating a husk failed
 *   exit <rawWaitStatus>            job ended
 *   lost <initRawWaitStatus>        init ended without reporting the job
 *
 * Exit status: the job's (exit code, or death by the same signal); 2 for
 * usage errors; 3 for setup failures.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h> /* struct clone_args */
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

#define EXIT_USAGE 2
#define EXIT_SETUP 3
#define EXIT_EXEC 127
#define MAX_PID 4194304 /* PID_MAX_LIMIT */
#define NS_FLAGS (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS)

static const char usage_text[] =
    "usage: crest-helper run [--ctl FD] [--net] -- CMD [ARGS...]\n"
    "       crest-helper restore [--ctl FD] [--net] --task PID[:PPID] [--task ...]\n"
    "       crest-helper probe\n"
    "       crest-helper --help\n";

/* ---- small utilities ------------------------------------------------- */

/* Print "crest-helper: <what>: <strerror(err)>" (async-signal-safe enough
   for our forked children: stderr is unbuffered). */
static void report(const char *what, int err)
{
	fprintf(stderr, "crest-helper: %s: %s\n", what, strerror(err));
}

/* Setup failure: report errno and leave with status 3.  _exit() so that a
   forked child never runs atexit handlers or flushes inherited stdio. */
static _Noreturn void die(const char *what)
{
	report(what, errno);
	_exit(EXIT_SETUP);
}

static _Noreturn void usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("crest-helper: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fputs(usage_text, stderr);
	exit(EXIT_USAGE);
}

/* Close every fd >= 3 except `keep` (-1 for none). */
static int close_fds_except(int keep)
{
	if (keep < 3)
		return close_range(3, ~0U, 0);
	if (keep > 3 && close_range(3, (unsigned)keep - 1, 0) < 0)
		return -1;
	return close_range((unsigned)keep + 1, ~0U, 0);
}

/* Close every fd >= 3 except a and b. */
static int close_fds_except2(int a, int b)
{
	int lo = a < b ? a : b, hi = a < b ? b : a;

	if (lo > 3 && close_range(3, (unsigned)lo - 1, 0) < 0)
		return -1;
	if (hi > lo + 1 && close_range((unsigned)lo + 1, (unsigned)hi - 1, 0) < 0)
		return -1;
	return close_range((unsigned)hi + 1, ~0U, 0);
}

static pid_t raw_clone(unsigned long flags)
{
	return (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
}

/* ---- signals --------------------------------------------------------- */

static int is_fault_signal(int sig)
{
	return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE ||
	       sig == SIGILL || sig == SIGTRAP || sig == SIGSYS;
}

/* Where caught signals go: init (in the outer) or the job (in init). */
static volatile pid_t forward_to;

static void forward_handler(int sig, siginfo_t *si, void *ctx)
{
	int saved = errno;

	(void)ctx;
	if (si->si_code <= 0) {
		/* Sent by a process (SI_USER, SI_QUEUE, SI_TKILL...).  Ignore
		   our own (e.g. SIGPIPE from a write to a closed pipe). */
		if (forward_to > 0 && si->si_pid != getpid())
			kill(forward_to, sig);
	} else if (is_fault_signal(sig)) {
		/* A real fault: let the retried instruction kill us. */
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = SIG_DFL;
		sigaction(sig, &sa, NULL);
	}
	/* Other kernel-generated signals (terminal, ...) already reached the
	   job through its process group. */
	errno = saved;
}

/* An inherited SIG_IGN for SIGCHLD would make the kernel reap our children
   before waitpid() could see them. */
static void default_sigchld(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	if (sigaction(SIGCHLD, &sa, NULL) < 0)
		die("sigaction");
}

static void install_forwarding(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = forward_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);
	for (int sig = 1; sig < NSIG; sig++) {
		if (!settable_signal(sig) || sig == SIGCHLD)
			continue;
		if (sigaction(sig, &sa, NULL) < 0)
			die("sigaction");
	}
	default_sigchld();
}

/* For children: every disposition back to default.  0 or -1/errno. */
static int reset_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	for (int sig = 1; sig < NSIG; sig++) {
		if (!settable_signal(sig))
			continue;
		if (sigaction(sig, &sa, NULL) < 0)
			return -1;
	}
	return 0;
}

/* ---- arguments ------------------------------------------------------- */

/* --ctl FD: a number naming an open fd >= 3 that is open for writing.
   Made close-on-exec here so that no job ever inherits it. */
static int parse_ctl(const char *s)
{
	long v;
	int fl;

	if (parse_uint(s, INT_MAX, &v) < 0)
		usage_error("--ctl '%s': not a file descriptor number", s);
	if (v < 3)
		usage_error("--ctl %ld: must be 3 or more (0-2 belong to the job)", v);
	if (fcntl((int)v, F_GETFD) < 0)
		usage_error("--ctl %ld: not an open file descriptor", v);
	fl = fcntl((int)v, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY)
		usage_error("--ctl %ld: not open for writing", v);
	if (fcntl((int)v, F_SETFD, FD_CLOEXEC) < 0)
		die("fcntl --ctl");
	return (int)v;
}

struct task {
	pid_t pid;
	pid_t ppid; /* 1 = created by init */
};

static void parse_task(const char *spec, struct task *t, const struct task *prev, int nprev)
{
	char num[24];
	const char *colon = strchr(spec, ':');
	size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
	long pid, ppid = 1;

	if (len >= sizeof num)
		usage_error("--task '%s': malformed PID", spec);
	memcpy(num, spec, len);
	num[len] = '\0';
	if (parse_uint(num, LONG_MAX / 10, &pid) < 0)
		usage_error("--task '%s': malformed PID", spec);
	if (pid < 2 || pid > MAX_PID)
		usage_error("--task '%s': PID must be between 2 and %d", spec, MAX_PID);
	if (colon && parse_uint(colon + 1, LONG_MAX / 10, &ppid) < 0)
		usage_error("--task '%s': malformed PPID", spec);
	for (int i = 0; i < nprev; i++)
		if (prev[i].pid == pid)
			usage_error("--task '%s': duplicate PID %ld", spec, pid);
	if (ppid != 1) {
		int found = 0;
		for (int i = 0; i < nprev; i++)
			found |= prev[i].pid == ppid;
		if (!found)
			usage_error("--task '%s': PPID %ld is neither 1 nor an earlier --task", spec, ppid);
	}
	t->pid = (pid_t)pid;
	t->ppid = (pid_t)ppid;
}

/* ---- messages between init/husks and their parents -------------------- */

enum { MSG_STARTED = 1, MSG_READY, MSG_STATUS, MSG_ERROR };

struct msg {
	int32_t kind;
	int32_t a; /* STARTED: job pid; STATUS: wait status; ERROR: pid */
	int32_t b; /* ERROR: errno */
};

static int send_msg(int fd, int kind, int a, int b)
{
	struct msg m = { kind, a, b };
	return write_all(fd, &m, sizeof m);
}

/* ---- the ctl channel -------------------------------------------------- */

static int ctl_fd = -1;

static void ctl_line(const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	int n;

	if (ctl_fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	/* Errors (the reader went away) are deliberately ignored: the job's
	   life does not depend on anyone listening. */
	if (n > 0 && (size_t)n < sizeof buf)
		(void)write_all(ctl_fd, buf, (size_t)n);
}

/* ---- /proc lookups (outer side) --------------------------------------- */

/* The PID of `pid` in its innermost pid namespace (last NSpid field), or
   -1 if it cannot be read (e.g. the process is gone). */
static pid_t inner_pid_of(pid_t pid)
{
	char path[64], *line = NULL;
	size_t cap = 0;
	pid_t inner = -1;
	FILE *f;

	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (getline(&line, &cap, f) > 0) {
		if (strncmp(line, "NSpid:", 6) == 0) {
			char *last = NULL, *save = NULL;
			for (char *tok = strtok_r(line + 6, " \t\n", &save); tok;
			     tok = strtok_r(NULL, " \t\n", &save))
				last = tok;
			long v;
			if (last && parse_uint(last, INT_MAX, &v) == 0)
				inner = (pid_t)v;
			break;
		}
	}
	free(line);
	fclose(f);
	return inner;
}

/* Children of `pid` (its main thread) as a malloc'd array; *n set. */
static pid_t *children_of(pid_t pid, int *n)
{
	char path[64];
	pid_t *kids = NULL;
	int cap = 0, c;
	FILE *f;

	*n = 0;
	snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
	f = fopen(path, "re");
	if (!f)
		return NULL;
	while (fscanf(f, "%d", &c) == 1) {
		if (*n == cap) {
			cap = cap ? cap * 2 : 8;
			pid_t *k = realloc(kids, (size_t)cap * sizeof *kids);
			if (!k)
				break;
			kids = k;
		}
		kids[(*n)++] = c;
	}
	fclose(f);
	return kids;
}

/* Walk the process tree below `pid` (outer PIDs); for each descendant whose
   inner PID is inner[i], store its outer PID in outer[i]. */
static void map_descendants(pid_t pid, const pid_t *inner, pid_t *outer, int n, int depth)
{
	int nk;
	pid_t *kids;

	if (depth > n) /* a tree of n tasks is no deeper than n */
		return;
	kids = children_of(pid, &nk);
	for (int k = 0; k < nk; k++) {
		pid_t in = inner_pid_of(kids[k]);
		for (int i = 0; i < n; i++)
			if (inner[i] == in)
				outer[i] = kids[k];
		map_descendants(kids[k], inner, outer, n, depth + 1);
	}
	free(kids);
}

/* ---- namespace creation (outer side) ---------------------------------- */

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	int err;

	if (fd < 0)
		return -1;
	if (write_all(fd, text, strlen(text)) < 0) {
		err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	return close(fd);
}

/* Map the caller's own uid/gid to themselves in the child's user namespace.
   0 or -1/errno with *what naming the failing file. */
static int write_id_maps(pid_t child, const char **what)
{
	static char path[64];
	char map[64];

	snprintf(path, sizeof path, "/proc/%d/setgroups", (int)child);
	*what = path;
	if (write_file(path, "deny") < 0)
		return -1;
	snprintf(path, sizeof path, "/proc/%d/uid_map", (int)child);
	snprintf(map, sizeof map, "%u %u 1", (unsigned)geteuid(), (unsigned)geteuid());
	if (write_file(path, map) < 0)
		return -1;
	snprintf(path, sizeof path, "/proc/%d/gid_map", (int)child);
	snprintf(map, sizeof map, "%u %u 1", (unsigned)getegid(), (unsigned)getegid());
	return write_file(path, map);
}

/* ---- init (PID 1 of the new namespace) -------------------------------- */

/* Shared by init and husks (copies after fork). */
static struct task *tasks;
static int ntasks;

static void mount_proc(void)
{
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make / private");
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		die("mount /proc");
}

/* Namespace flags of this job: NS_FLAGS, plus CLONE_NEWNET with --net. */
static unsigned long ns_flags = NS_FLAGS;

/* Bring up the loopback interface of a new network namespace.  0 or -1/errno. */
static int bring_lo_up(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int ret = -1;

	if (s < 0)
		return -1;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		ret = ioctl(s, SIOCSIFFLAGS, &ifr);
	}
	close(s);
	return ret;
}

/* The job of "run": runs in the forked child, never returns. */
static _Noreturn void exec_job(char **argv)
{
	if (reset_signals() < 0 || unblock_all() < 0) {
		report("job signal setup", errno);
		_exit(EXIT_EXEC);
	}
	if (close_range(3, ~0U, 0) < 0) {
		report("job close_range", errno);
		_exit(EXIT_EXEC);
	}
	execvp(argv[0], argv);
	fprintf(stderr, "crest-helper: cannot execute %s: %s\n", argv[0], strerror(errno));
	_exit(EXIT_EXEC);
}

static int spawn_husk(int idx, struct msg *err);

/* A husk: runs in the clone3 child, never returns.  `up` reports to the
   parent: MSG_READY once the whole subtree exists, or MSG_ERROR. */
static _Noreturn void husk_main(int idx, int up)
{
	struct msg err;

	if (reset_signals() < 0 || unblock_all() < 0 || close_fds_except(up) < 0) {
		send_msg(up, MSG_ERROR, tasks[idx].pid, errno);
		_exit(EXIT_SETUP);
	}
	for (int j = idx + 1; j < ntasks; j++) {
		if (tasks[j].ppid != tasks[idx].pid)
			continue;
		if (spawn_husk(j, &err) < 0) {
			send_msg(up, MSG_ERROR, err.a, err.b);
			_exit(EXIT_SETUP);
		}
	}
	send_msg(up, MSG_READY, tasks[idx].pid, 0);
	close(up);
	for (;;)
		pause();
}

/* Create the husk for tasks[idx] (as a child of the caller) and wait until
   it and its whole subtree exist.  0, or -1 with *err = {pid, errno}. */
static int spawn_husk(int idx, struct msg *err)
{
	int p[2];
	pid_t pid;
	struct msg m;
	ssize_t n;

	err->kind = MSG_ERROR;
	err->a = tasks[idx].pid;
	if (pipe2(p, O_CLOEXEC) < 0) {
		err->b = errno;
		return -1;
	}
	pid = clone3_pid(tasks[idx].pid);
	if (pid < 0) {
		err->b = errno;
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0) {
		close(p[0]);
		husk_main(idx, p[1]);
	}
	close(p[1]);
	n = read_full(p[0], &m, sizeof m);
	close(p[0]);
	if (n != (ssize_t)sizeof m) {
		err->b = n < 0 ? errno : ECHILD; /* died before reporting */
		return -1;
	}
	if (m.kind != MSG_READY) {
		*err = m;
		return -1;
	}
	return 0;
}

/* init: go_r = from outer (release, then acks), rep_w = to outer.
   Entered with every signal blocked. */
static _Noreturn void init_main(int go_r, int rep_w, char **argv)
{
	char c;
	pid_t job;
	struct msg err;

	/* If the outer dies, take the namespace down with us. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		die("prctl");
	if (close_fds_except2(go_r, rep_w) < 0)
		die("close_range");
	forward_to = 0;
	install_forwarding();
	/* Wait for the id maps (EOF: the outer is gone or gave up). */
	if (read_full(go_r, &c, 1) != 1)
		_exit(EXIT_SETUP);

	mount_proc();
	if ((ns_flags & CLONE_NEWNET) && bring_lo_up() < 0)
		die("bring up lo in the new network namespace");

	if (argv) {
		job = fork();
		if (job < 0)
			die("fork");
		if (job == 0)
			exec_job(argv);
		if (send_msg(rep_w, MSG_STARTED, job, 0) < 0)
			die("report to outer");
	} else {
		for (int i = 0; i < ntasks; i++) {
			if (tasks[i].ppid != 1)
				continue;
			if (spawn_husk(i, &err) < 0) {
				send_msg(rep_w, MSG_ERROR, err.a, err.b);
				_exit(EXIT_SETUP);
			}
		}
		job = tasks[0].pid;
		if (send_msg(rep_w, MSG_READY, job, 0) < 0)
			die("report to outer");
	}
	/* Reap nothing until the outer has looked the PIDs up in /proc. */
	(void)read_full(go_r, &c, 1);
	close(go_r);

	forward_to = job;
	if (unblock_all() < 0)
		die("sigprocmask");
	for (;;) {
		int st;
		pid_t w = waitpid(-1, &st, __WALL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("waitpid");
		}
		if (w == job && (WIFEXITED(st) || WIFSIGNALED(st))) {
			send_msg(rep_w, MSG_STATUS, st, 0);
			/* Our exit kills whatever is left in the namespace. */
			_exit(0);
		}
	}
}

/* ---- outer ------------------------------------------------------------ */

/* End this process the way `status` says (exit code or signal). */
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
		/* Still here: a signal whose default is not to terminate. */
		_exit(128 + sig);
	}
	_exit(EXIT_SETUP);
}

/* Shared by run and restore.  argv != NULL: run that command; otherwise
   restore the tasks[] tree. */
static int outer_main(char **argv)
{
	int go[2], rep[2], st;
	const char *what;
	pid_t init;
	struct msg m;
	int have_status = 0, job_status = 0;

	if (block_all() < 0)
		die("sigprocmask");
	install_forwarding();
	if (pipe2(go, O_CLOEXEC) < 0 || pipe2(rep, O_CLOEXEC) < 0)
		die("pipe");

	init = raw_clone(ns_flags);
	if (init < 0)
		die(ns_flags & CLONE_NEWNET ? "clone (user+pid+mount+network namespaces)" : "clone (user+pid+mount namespaces)");
	if (init == 0) {
		init_main(go[0], rep[1], argv);
	}
	close(go[0]);
	close(rep[1]);

	if (write_id_maps(init, &what) < 0) {
		int err = errno;
		kill(init, SIGKILL);
		wait_for(init, &st);
		errno = err;
		die(what);
	}
	if (write_all(go[1], "g", 1) < 0) {
		int err = errno;
		kill(init, SIGKILL);
		wait_for(init, &st);
		errno = err;
		die("release init");
	}
	forward_to = init;
	if (unblock_all() < 0)
		die("sigprocmask");

	for (;;) {
		ssize_t n = read_full(rep[0], &m, sizeof m);
		if (n < 0)
			die("read from init");
		if (n != (ssize_t)sizeof m)
			break; /* init is gone */
		if (m.kind == MSG_STARTED) {
			pid_t inner = m.a, outer = -1;
			map_descendants(init, &inner, &outer, 1, 0);
			if (outer < 0) {
				fprintf(stderr, "crest-helper: cannot find the job (PID %d) in /proc\n", (int)inner);
				kill(init, SIGKILL);
				wait_for(init, &st);
				ctl_line("lost %d\n", st);
				_exit(EXIT_SETUP);
			}
			ctl_line("started %d %d\n", (int)init, (int)outer);
			(void)write_all(go[1], "a", 1);
		} else if (m.kind == MSG_READY) {
			pid_t *inner = calloc((size_t)ntasks, sizeof *inner);
			pid_t *outer = calloc((size_t)ntasks, sizeof *outer);
			int missing = -1;
			if (!inner || !outer)
				die("calloc");
			for (int i = 0; i < ntasks; i++) {
				inner[i] = tasks[i].pid;
				outer[i] = -1;
			}
			map_descendants(init, inner, outer, ntasks, 0);
			for (int i = 0; i < ntasks && missing < 0; i++)
				if (outer[i] < 0)
					missing = i;
			if (missing >= 0) {
				fprintf(stderr, "crest-helper: cannot find task %d in /proc\n", (int)inner[missing]);
				ctl_line("error %d %s\n", (int)inner[missing], errno_name(ESRCH));
				kill(init, SIGKILL);
				wait_for(init, &st);
				_exit(EXIT_SETUP);
			}
			for (int i = 0; i < ntasks; i++)
				ctl_line("husk %d %d\n", (int)inner[i], (int)outer[i]);
			ctl_line("ready %d\n", (int)init);
			free(inner);
			free(outer);
			(void)write_all(go[1], "a", 1);
		} else if (m.kind == MSG_ERROR) {
			fprintf(stderr, "crest-helper: cannot create task %d: %s\n", (int)m.a, strerror(m.b));
			ctl_line("error %d %s\n", (int)m.a, errno_name(m.b));
			kill(init, SIGKILL); /* takes every husk with it */
			wait_for(init, &st);
			_exit(EXIT_SETUP);
		} else if (m.kind == MSG_STATUS) {
			have_status = 1;
			job_status = m.a;
		}
	}
	/* EOF: init has exited (or is exiting); stop forwarding before it is
	   reaped so that a recycled PID can never receive our signals. */
	forward_to = 0;
	close(rep[0]);
	close(go[1]);

	if (wait_for(init, &st) < 0)
		die("waitpid init");
	if (have_status) {
		ctl_line("exit %d\n", job_status);
		mirror_status(job_status);
	}
	ctl_line("lost %d\n", st);
	mirror_status(st);
}

/* ---- probe ------------------------------------------------------------ */

/* TCP_REPAIR on a fresh TCP socket (needs CAP_NET_ADMIN over its network
   namespace).  0 or an errno. */
static int probe_tcp_repair(void)
{
	int one = 1, err = 0;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);

	if (s < 0)
		return errno;
	if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &one, sizeof one) < 0)
		err = errno;
	close(s);
	return err;
}

/* Inside the throwaway namespace: results[0] = mount, results[1] = set_tid,
   results[2] = loopback up, results[3] = TCP_REPAIR. */
static _Noreturn void probe_child(int go_r, int res_w)
{
	int res[4] = { 0, 0, 0, 0 }, st;
	char c;
	pid_t pid;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || read_full(go_r, &c, 1) != 1)
		_exit(EXIT_SETUP);
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		res[0] = errno;
	pid = clone3_pid(77);
	if (pid == 0)
		_exit(0);
	if (pid < 0)
		res[1] = errno;
	else if (wait_for(pid, &st) < 0)
		res[1] = errno;
	else if (pid != 77)
		res[1] = EINVAL;
	/* A network namespace of its own, apart: a failure here must not hide the steps above. */
	if (unshare(CLONE_NEWNET) < 0 || bring_lo_up() < 0)
		res[2] = errno;
	res[3] = res[2] ? res[2] : probe_tcp_repair();
	if (write_all(res_w, res, sizeof res) < 0)
		_exit(EXIT_SETUP);
	_exit(0);
}

static const char *result(int err)
{
	return err ? errno_name(err) : "ok";
}

static int probe_main(void)
{
	int go[2], rp[2], st, e_userns = 0, e_mount = 0, e_settid = 0, e_clone3 = 0, e_netns = 0, e_repair = 0;
	int res[4];
	const char *what;
	pid_t pid;

	if (block_all() < 0)
		die("sigprocmask");
	default_sigchld();
	if (pipe2(go, O_CLOEXEC) < 0 || pipe2(rp, O_CLOEXEC) < 0)
		die("pipe");

	pid = raw_clone(NS_FLAGS);
	if (pid == 0)
		probe_child(go[0], rp[1]);
	close(go[0]);
	close(rp[1]);
	if (pid < 0) {
		e_userns = errno;
	} else if (write_id_maps(pid, &what) < 0) {
		e_userns = errno;
		kill(pid, SIGKILL);
	} else if (write_all(go[1], "g", 1) < 0 || read_full(rp[0], res, sizeof res) != sizeof res) {
		e_userns = ECHILD; /* the probe child died */
	} else {
		e_mount = res[0];
		e_settid = res[1];
		e_netns = res[2];
		e_repair = res[3];
	}
	if (pid > 0 && wait_for(pid, &st) < 0)
		die("waitpid");
	if (e_userns) /* the later steps could not be tried */
		e_mount = e_settid = e_netns = e_repair = e_userns;

	pid = clone3_pid(0);
	if (pid == 0)
		_exit(0);
	if (pid < 0)
		e_clone3 = errno;
	else if (wait_for(pid, &st) < 0)
		die("waitpid");

	printf("userns %s\n", result(e_userns));
	printf("mountproc %s\n", result(e_mount));
	printf("set_tid %s\n", result(e_settid));
	printf("clone3 %s\n", result(e_clone3));
	printf("netns %s\n", result(e_netns));
	printf("tcp_repair %s\n", result(e_repair));
	if (fflush(stdout) == EOF)
		die("write stdout");
	return 0;
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
	int i = 2;

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

	if (strcmp(argv[1], "run") == 0) {
		for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
			if (strcmp(argv[i], "--net") == 0) {
				if (ns_flags & CLONE_NEWNET)
					usage_error("run: --net given twice");
				ns_flags |= CLONE_NEWNET;
				continue;
			}
			if (strcmp(argv[i], "--ctl") != 0)
				usage_error("run: unexpected argument '%s' (missing '--' before the command?)", argv[i]);
			if (ctl_fd >= 0)
				usage_error("run: --ctl given twice");
			if (++i == argc)
				usage_error("run: --ctl needs a file descriptor");
			ctl_fd = parse_ctl(argv[i]);
		}
		if (i == argc)
			usage_error("run: missing '--' before the command");
		if (++i == argc)
			usage_error("run: missing command after '--'");
		if (argv[i][0] == '\0')
			usage_error("run: empty command");
		return outer_main(argv + i);
	}

	if (strcmp(argv[1], "restore") == 0) {
		tasks = calloc((size_t)argc, sizeof *tasks);
		if (!tasks)
			die("calloc");
		for (; i < argc; i++) {
			if (strcmp(argv[i], "--ctl") == 0) {
				if (ctl_fd >= 0)
					usage_error("restore: --ctl given twice");
				if (++i == argc)
					usage_error("restore: --ctl needs a file descriptor");
				ctl_fd = parse_ctl(argv[i]);
			} else if (strcmp(argv[i], "--net") == 0) {
				if (ns_flags & CLONE_NEWNET)
					usage_error("restore: --net given twice");
				ns_flags |= CLONE_NEWNET;
			} else if (strcmp(argv[i], "--task") == 0) {
				if (++i == argc)
					usage_error("restore: --task needs PID[:PPID]");
				parse_task(argv[i], &tasks[ntasks], tasks, ntasks);
				ntasks++;
			} else {
				usage_error("restore: unexpected argument '%s'", argv[i]);
			}
		}
		if (ntasks == 0)
			usage_error("restore: at least one --task is required");
		return outer_main(NULL);
	}

	usage_error("unknown verb '%s'", argv[1]);
}
