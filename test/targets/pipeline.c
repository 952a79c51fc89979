/*
 * pipeline: the three stages of a shell pipeline (test/cr/pipeline.test.ts),
 *   sh -c 'pipeline W produce BYTES SEED | pipeline W filter SEED | pipeline W consume BYTES SEED'
 * carrying a checksummed stream through a checkpoint.
 *   produce: writes BYTES bytes of the stream of SEED to stdout as fast as
 *            the pipe takes them, then exits 0;
 *   filter:  makes its stdout pipe 1 MiB, copies stdin to stdout with each
 *            byte XORed with a key that depends on its position, exits 0 at EOF;
 *   consume: reads stdin slowly (16 KiB a millisecond), says ready once it
 *            has its first bytes, waits for W/go half-way through (writing
 *            W/half there: the checkpoint then finds both pipes full, data in
 *            flight, the producer and the filter blocked writing), then reads
 *            the rest at full speed and checks every byte against the
 *            expected stream (producer's bytes XOR the filter's key), the
 *            total length and the capacity of its stdin pipe; prints
 *            PASS/FAIL. sh exits with its status.
 * Keys: "data" (one byte read flipped), "length" (one byte short), "size"
 * (the capacity of stdin changed), "pid".
 */
#define TARGET_NAME "pipeline"
#include "common.h"
#include <signal.h>

static const char *const KEYS[] = {"data", "length", "size", NULL};

#define CHUNK 65536
#define PIPE_BIG (1 << 20)

static uint64_t mix(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Byte `i` of the producer's stream, and the filter's key for byte `i`. */
static unsigned char stream_byte(uint64_t seed, uint64_t i)
{
    return (unsigned char)(mix(seed ^ (i >> 3) * 0x9E3779B97F4A7C15ULL) >> ((i & 7) * 8));
}
static unsigned char key_byte(uint64_t seed, uint64_t i)
{
    return (unsigned char)(mix(~seed ^ (i >> 3) * 0xD6E8FEB86659FD93ULL) >> ((i & 7) * 8));
}

static uint64_t parse_u64(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || *end != 0) die("bad %s '%s'", what, s);
    return v;
}

static int produce(uint64_t total, uint64_t seed)
{
    static unsigned char buf[CHUNK];
    for (uint64_t off = 0; off < total;) {
        size_t n = total - off < CHUNK ? (size_t)(total - off) : CHUNK;
        for (size_t k = 0; k < n; k++) buf[k] = stream_byte(seed, off + k);
        write_all(1, buf, n, "producer stdout");
        off += n;
    }
    return 0;
}

static int filter(uint64_t seed)
{
    static unsigned char buf[CHUNK];
    if (fcntl(1, F_SETPIPE_SZ, PIPE_BIG) < PIPE_BIG) DIE_ERRNO("F_SETPIPE_SZ on the filter's stdout");
    for (uint64_t off = 0;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            DIE_ERRNO("filter stdin");
        }
        if (n == 0) return 0;
        for (ssize_t k = 0; k < n; k++) buf[k] ^= key_byte(seed, off + (uint64_t)k);
        write_all(1, buf, (size_t)n, "filter stdout");
        off += (uint64_t)n;
    }
}

static int consume(uint64_t total, uint64_t seed)
{
    static unsigned char buf[16384];
    uint64_t got = 0, first_bad = UINT64_MAX;
    int ready = 0, gone = 0, flip = 0;
    unsigned char bad_got = 0, bad_want = 0;
    for (;;) {
        if (ready && !gone && got >= total / 2) {
            write_filef("half", "%llu\n", (unsigned long long)got);
            wait_go(NULL);
            gone = 1;
            flip = sabotage("data");
        }
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            DIE_ERRNO("consumer stdin");
        }
        if (n == 0) break;
        if (flip) {
            buf[0] ^= 1;
            flip = 0;
        }
        for (ssize_t k = 0; k < n && first_bad == UINT64_MAX; k++) {
            unsigned char want = stream_byte(seed, got + (uint64_t)k) ^ key_byte(seed, got + (uint64_t)k);
            if (buf[k] != want) {
                first_bad = got + (uint64_t)k;
                bad_got = buf[k];
                bad_want = want;
            }
        }
        got += (uint64_t)n;
        if (!ready) {
            announce_ready();
            ready = 1;
        }
        if (!gone) sleep_ms(1);
    }
    if (!gone) wait_go(NULL); /* a stream shorter than half: still say what was seen */
    if (sabotage("length")) got -= 1;
    if (sabotage("size")) fcntl(0, F_SETPIPE_SZ, 65536);
    CHECK("data", first_bad == UINT64_MAX, "byte %llu is 0x%02x, want 0x%02x", (unsigned long long)first_bad, bad_got, bad_want);
    CHECK("length", got == total, "read %llu bytes, want %llu", (unsigned long long)got, (unsigned long long)total);
    int size = fcntl(0, F_GETPIPE_SZ);
    CHECK("size", size == PIPE_BIG, "stdin pipe capacity %d, want %d", size, PIPE_BIG);
    return finish();
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    signal(SIGPIPE, SIG_DFL);
    if (argc == 5 && strcmp(argv[2], "produce") == 0) return produce(parse_u64(argv[3], "BYTES"), parse_u64(argv[4], "SEED"));
    if (argc == 4 && strcmp(argv[2], "filter") == 0) return filter(parse_u64(argv[3], "SEED"));
    if (argc == 5 && strcmp(argv[2], "consume") == 0) return consume(parse_u64(argv[3], "BYTES"), parse_u64(argv[4], "SEED"));
    die("usage: %s W produce BYTES SEED | filter SEED | consume BYTES SEED", argv[0]);
}
