/* What this machine needs just to touch fresh memory: the baseline that
   restore time is compared with. Maps N MiB of fresh anonymous memory and
   either writes one byte per page (first touch, page by page) or populates
   it in bulk (MADV_POPULATE_WRITE). Prints the seconds taken. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: touch MIB page|bulk\n");
		return 2;
	}
	size_t size = (size_t)atol(argv[1]) << 20;
	int bulk = strcmp(argv[2], "bulk") == 0;
	double t0 = now();
	volatile char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (bulk) {
		if (madvise((void *)p, size, MADV_POPULATE_WRITE) != 0) {
			perror("madvise");
			return 1;
		}
	} else {
		for (size_t i = 0; i < size; i += 4096)
			p[i] = 1;
	}
	printf("%.6f\n", now() - t0);
	return 0;
}
