/*
 * What both crest helpers need alike (crest-helper.c, crest-pidhelper.c):
 * errno names, whole reads and writes, number parsing, waiting, signal
 * masks and clone3 with a chosen pid. Plain system calls, no policy; each
 * helper includes it once, before its own code.
 */
#ifndef CREST_HELPER_UTIL_H
#define CREST_HELPER_UTIL_H

static const char *errno_name(int err)
{
	static char buf[32];
	const char *name = strerrorname_np(err);

	if (name)
		return name;
	snprintf(buf, sizeof buf, "E%d", err);
	return buf;
}

/* Write everything, retrying on EINTR and short writes.  0 or -1/errno. */
static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read exactly len bytes unless EOF comes first.  Returns the number of
   bytes read (short only at EOF) or -1/errno. */
static ssize_t read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Strict decimal: digits only, no sign, no spaces, value <= max. */
static int parse_uint(const char *s, long max, long *out)
{
	long v = 0;

	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > max)
			return -1;
	}
	*out = v;
	return 0;
}

/* waitpid() for one pid, retrying on EINTR. */
static pid_t wait_for(pid_t pid, int *status)
{
	pid_t r;

	do
		r = waitpid(pid, status, __WALL);
	while (r < 0 && errno == EINTR);
	return r;
}

/* Signals glibc reserves for itself (32, 33) cannot be touched. */
static int settable_signal(int sig)
{
	if (sig == SIGKILL || sig == SIGSTOP)
		return 0;
	return sig < 32 || sig >= SIGRTMIN;
}

static int set_mask(int how, const sigset_t *set)
{
	errno = pthread_sigmask(how, set, NULL);
	return errno ? -1 : 0;
}

static int block_all(void)
{
	sigset_t all;

	sigfillset(&all);
	return set_mask(SIG_SETMASK, &all);
}

static int unblock_all(void)
{
	sigset_t none;

	sigemptyset(&none);
	return set_mask(SIG_SETMASK, &none);
}

/* clone3() with fork semantics; set_tid 0 means "any PID". */
static pid_t clone3_pid(pid_t set_tid)
{
	pid_t tid = set_tid;
	struct clone_args args;

	memset(&args, 0, sizeof args);
	args.exit_signal = SIGCHLD;
	if (set_tid > 0) {
		args.set_tid = (uint64_t)(uintptr_t)&tid;
		args.set_tid_size = 1;
	}
	return (pid_t)syscall(SYS_clone3, &args, sizeof args);
}

#endif
