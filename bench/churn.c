/* The job of the batch section of `npm run bench` (bench/batch.ts).
     churn W MIB random|real
   Holds MIB MiB: "random" fills it with pseudo-random bytes (incompressible);
   "real" fills half with a numeric array (float64 samples of a smooth field,
   rounded as a simulation would write them) and half with a text heap
   (malloc'd strings of words and numbers), as a real process's memory looks.
   Then loops every 1 ms, measuring the longest gap between two rounds: the
   pause a checkpoint inflicts, as the job sees it. Driven through files in W:
     W/change-N (holding a percentage): rewrite that share of the pages
       (chosen at random), then write W/changed-N;
     W/gap-N: write W/gapus-N with the longest gap (microseconds) since the
       previous gap request, and start measuring again.
   Writes W/ready once filled. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *wdir;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1DULL;
}

static int exists(const char *name, long n, char *path, size_t cap)
{
	snprintf(path, cap, "%s/%s-%ld", wdir, name, n);
	return access(path, F_OK) == 0;
}

static void put(const char *name, long n, const char *text)
{
	char path[4096], tmp[4200];
	snprintf(path, sizeof path, "%s/%s-%ld", wdir, name, n);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) exit(2);
	fputs(text, f);
	fclose(f);
	rename(tmp, path);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: churn W MIB random|real\n");
		return 2;
	}
	wdir = argv[1];
	size_t size = (size_t)atol(argv[2]) << 20, pages = size / 4096;
	int real = strcmp(argv[3], "real") == 0;
	unsigned char *mem = malloc(size);
	if (!mem) return 2;
	if (!real) {
		for (size_t i = 0; i < size; i += 8) *(uint64_t *)(mem + i) = next();
	} else {
		double *field = (double *)mem;
		size_t nd = size / 2 / sizeof(double);
		for (size_t i = 0; i < nd; i++) {
			double x = (double)i / 4096.0;
			double v = 300.0 + 25.0 * __builtin_sin(x) * __builtin_cos(x / 7.0) + (double)(next() % 1000) / 1000.0;
			field[i] = (double)(long)(v * 1000.0) / 1000.0;
		}
		static const char *words[] = {"particle", "velocity", "pressure", "cell", "boundary", "flux", "step", "energy",
					      "temperature", "mesh", "node", "solver", "residual", "iteration", "density"};
		char *heap = (char *)mem + size / 2, *end = (char *)mem + size;
		while (heap + 96 < end) {
			/* A malloc chunk: 16-byte header, then a line of text. */
			memset(heap, 0, 16);
			*(uint64_t *)(heap + 8) = 0x61;
			int n = snprintf(heap + 16, 80, "%s %s %lu %s=%.3f", words[next() % 15], words[next() % 15],
					 (unsigned long)(next() % 100000), words[next() % 15], (double)(next() % 100000) / 7.0);
			heap += 16 + ((n + 16) & ~15);
		}
	}
	put("ready", 0, "ready\n");
	char path[4096];
	long change = 1, gapreq = 0;
	double last = now(), maxgap = 0;
	for (;;) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
		double t = now();
		if (t - last > maxgap) maxgap = t - last;
		last = t;
		if (exists("change", change, path, sizeof path)) {
			FILE *f = fopen(path, "r");
			double pct = 0;
			if (f) {
				if (fscanf(f, "%lf", &pct) != 1) pct = 0;
				fclose(f);
			}
			size_t n = (size_t)(pages * pct / 100.0);
			for (size_t i = 0; i < n; i++) {
				size_t p = next() % pages;
				uint64_t *w = (uint64_t *)(mem + p * 4096);
				for (int k = 0; k < 512; k += 64) w[k] ^= next() | 1;
			}
			put("changed", change, "done\n");
			change++;
			last = now();
		}
		if (exists("gap", gapreq, path, sizeof path)) {
			char text[64];
			snprintf(text, sizeof text, "%.0f\n", maxgap * 1e6);
			put("gapus", gapreq, text);
			gapreq++;
			maxgap = 0;
			last = now();
		}
	}
}
