/*
 * steps: a long computation with a known result, for batch tests
 * (test/cr/batch*.test.ts, test/slurm.test.ts).
 *   steps W TOTAL [MS_PER_STEP [MIB [FILL]]]
 * Holds a buffer of MIB MiB (default 8), filled from a fixed seed (FILL
 * "random", the default) or with text and small numbers that compress like
 * a real heap (FILL "text"). Step k
 * (1..TOTAL) rewrites 1/32 of the buffer's pages (a different slice each
 * step, so a checkpoint after the first changes ~3% of pages) and folds
 * words of the buffer into an accumulator; then appends "step k acc=0x..."
 * to W/progress.log (opened and closed each time: no fd held), sleeps
 * MS_PER_STEP ms (default 100). A fresh start appends "start" first; the end
 * writes W/result ("RESULT 0x... steps TOTAL") and prints the same line.
 * The result depends only on TOTAL and MIB, never on timing, checkpoints or
 * restores: run it directly with MS_PER_STEP 0 to get the expected value.
 */
#define TARGET_NAME "steps"
#include "common.h"

static const char *const KEYS[] = {NULL};

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    long total = argc > 2 ? atol(argv[2]) : 100;
    long ms = argc > 3 ? atol(argv[3]) : 100;
    long mib = argc > 4 ? atol(argv[4]) : 8;
    const char *fill = argc > 5 ? argv[5] : "random";
    if (total <= 0 || ms < 0 || mib <= 0 || mib > 8192 || (strcmp(fill, "random") && strcmp(fill, "text")))
        die("usage: steps W TOTAL [MS_PER_STEP [MIB [random|text]]]");
    size_t words = ((size_t)mib << 20) / sizeof(uint64_t);
    size_t pages = words / 512, slice = pages / 32 ? pages / 32 : 1;
    uint64_t *buf = malloc(words * sizeof(uint64_t));
    if (!buf) die("malloc failed");
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    if (strcmp(fill, "text") == 0) {
        static const char words_[] = "the quick brown fox jumps over the lazy dog; step value count ";
        char *b = (char *)buf;
        for (size_t i = 0; i < words * 8; i++) b[i] = words_[(i + i / 4096) % (sizeof words_ - 1)];
        for (size_t i = 0; i < words; i += 16) buf[i] = i % 1000;
    } else {
        for (size_t i = 0; i < words; i++) buf[i] = xorshift64(&s);
    }
    uint64_t acc = 0xcbf29ce484222325ULL;

    append_file("progress.log", "start\n");
    announce_ready();
    for (long k = 1; k <= total; k++) {
        size_t first = ((size_t)k * slice) % pages;
        for (size_t p = first; p < first + slice && p < pages; p++) {
            uint64_t *w = buf + p * 512;
            for (size_t i = 0; i < 512; i += 8) w[i] = w[i] * 6364136223846793005ULL + (uint64_t)k + acc;
        }
        for (size_t i = (size_t)k % 97; i < words; i += 4099) acc = (acc ^ buf[i]) * 0x100000001b3ULL;
        char line[96];
        snprintf(line, sizeof line, "step %ld acc=0x%016llx\n", k, (unsigned long long)acc);
        append_file("progress.log", line);
        if (ms > 0) sleep_ms(ms);
    }
    char res[96];
    snprintf(res, sizeof res, "RESULT 0x%016llx steps %ld\n", (unsigned long long)acc, total);
    write_file("result", res, strlen(res));
    fputs(res, stdout);
    fflush(stdout);
    free(buf);
    return 0;
}
