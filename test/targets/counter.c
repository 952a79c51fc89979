/*
 * counter / static_counter: a counting loop over a large malloc'd buffer.
 *   counter W [MiB]   (default DEFAULT_MIB)
 * Before ready: fills the buffer with a seeded pseudo-random pattern, writes
 * its checksum to W/sum, the seed to W/seed and the loop counter to W/counter.
 * After go: the buffer still holds the pattern (regenerated from the seed
 * kept in memory), its checksum equals the one computed before and the one in
 * W/sum, the counter only went up, and getpid() is unchanged.
 */
#ifndef TARGET_NAME
#define TARGET_NAME "counter"
#endif
#ifndef DEFAULT_MIB
#define DEFAULT_MIB 64
#endif
#include "common.h"

static const char *const KEYS[] = {"buffer", "sum", "counter", "seed", NULL};

static volatile uint64_t counter;
static uint64_t *buf;
static size_t words;

static void tick(void)
{
    uint64_t before = counter;
    counter = before + 1;
}

static uint64_t checksum(void)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < words; i++) h = (h ^ buf[i]) * 0x100000001b3ULL;
    return h;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    long mib = argc > 2 ? atol(argv[2]) : DEFAULT_MIB;
    if (mib <= 0 || mib > 8192) die("bad size %s MiB", argc > 2 ? argv[2] : "?");
    size_t size = (size_t)mib << 20;
    words = size / sizeof(uint64_t);
    buf = malloc(size);
    if (!buf) die("malloc(%zu) failed", size);

    const uint64_t seed = fresh_seed();
    uint64_t s = seed;
    for (size_t i = 0; i < words; i++) {
        buf[i] = xorshift64(&s);
        if ((i & 0xffff) == 0) tick();
    }
    const uint64_t sum = checksum();
    write_filef("sum", "0x%016llx\n", (unsigned long long)sum);
    write_filef("seed", "0x%016llx\n", (unsigned long long)seed);
    const uint64_t at_ready = counter;
    write_filef("counter", "%llu\n", (unsigned long long)at_ready);
    announce_ready();

    wait_go(tick);

    if (sabotage("buffer")) ((volatile unsigned char *)buf)[size / 2 + 12345] ^= 0x40;
    if (sabotage("sum")) write_filef("sum", "0x%016llx\n", (unsigned long long)(sum ^ 1));
    if (sabotage("counter")) counter = 0;
    if (sabotage("seed")) write_filef("seed", "0x%016llx\n", (unsigned long long)(seed + 1));

    /* The pattern, word by word: names the first difference. */
    uint64_t r = seed;
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < words; i++) {
        if (buf[i] != xorshift64(&r)) {
            if (bad++ == 0) first_bad = i;
        }
    }
    CHECK("buffer", bad == 0, "%zu of %zu words differ from the pattern, first at byte offset %zu", bad, words,
          first_bad * sizeof(uint64_t));

    uint64_t now_sum = checksum();
    unsigned long long file_sum = read_ull("sum", 0);
    CHECK("sum", now_sum == sum && now_sum == file_sum,
          "checksum now 0x%016llx, before 0x%016llx, W/sum 0x%016llx", (unsigned long long)now_sum,
          (unsigned long long)sum, file_sum);
    CHECK("seed", read_ull("seed", 0) == seed, "seed in memory 0x%016llx differs from W/seed",
          (unsigned long long)seed);

    uint64_t c = counter;
    long long file_counter = read_ll("counter", -1);
    CHECK("counter", c > at_ready && (long long)at_ready == file_counter,
          "counter %llu is not above its value at ready %llu (W/counter %lld)", (unsigned long long)c,
          (unsigned long long)at_ready, file_counter);

    free(buf);
    return finish();
}
