/*
 * fpu: FPU/SSE/AVX registers held live across the checkpoint.
 * fpu_hold() (assembly below) loads distinct seeded patterns into ymm0-ymm15
 * (xmm0-xmm15 without AVX), pushes two 80-bit values and pi on the x87 stack
 * under a non-default control word, sets MXCSR to a non-default rounding
 * mode with FTZ, then writes W/ready and polls for W/go with raw syscalls
 * only (open/write/close/rename, access, nanosleep): no libc code runs while
 * the registers are live. Once go exists it stores every register to memory
 * and the C code compares them with what was loaded.
 */
#define TARGET_NAME "fpu"
#include "common.h"
#include <cpuid.h>
#include <stddef.h>

struct fpu_ctx {
    uint8_t in[16][32];     /*    0 */
    uint8_t out[16][32];    /*  512 */
    uint32_t mxcsr_in;      /* 1024 */
    uint32_t mxcsr_out;     /* 1028 */
    uint16_t fcw_in;        /* 1032 */
    uint16_t fcw_out;       /* 1034 */
    uint32_t have_avx;      /* 1036 */
    uint8_t x87_in[2][16];  /* 1040 */
    uint8_t x87_out[3][16]; /* 1072 */
    uint64_t sabotage;      /* 1120 */
    uint64_t polls;         /* 1128 */
    const char *go_path;    /* 1136 */
    const char *ready_tmp;  /* 1144 */
    const char *ready_path; /* 1152 */
    const char *ready_text; /* 1160 */
    uint64_t ready_len;     /* 1168 */
    struct timespec ts;     /* 1176 */
    int64_t err;            /* 1192 */
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct fpu_ctx, out) == 512, "layout");
_Static_assert(offsetof(struct fpu_ctx, mxcsr_in) == 1024, "layout");
_Static_assert(offsetof(struct fpu_ctx, fcw_in) == 1032, "layout");
_Static_assert(offsetof(struct fpu_ctx, have_avx) == 1036, "layout");
_Static_assert(offsetof(struct fpu_ctx, x87_in) == 1040, "layout");
_Static_assert(offsetof(struct fpu_ctx, x87_out) == 1072, "layout");
_Static_assert(offsetof(struct fpu_ctx, sabotage) == 1120, "layout");
_Static_assert(offsetof(struct fpu_ctx, polls) == 1128, "layout");
_Static_assert(offsetof(struct fpu_ctx, go_path) == 1136, "layout");
_Static_assert(offsetof(struct fpu_ctx, ready_len) == 1168, "layout");
_Static_assert(offsetof(struct fpu_ctx, ts) == 1176, "layout");
_Static_assert(offsetof(struct fpu_ctx, err) == 1192, "layout");

#define SAB_XMM 1
#define SAB_YMM 2
#define SAB_MXCSR 4
#define SAB_X87 8
#define SAB_FCW 16

void fpu_hold(struct fpu_ctx *ctx);

#define LOADV(i) "vmovdqu ymm" #i ", [r12 + " #i "*32]\n"
#define LOADX(i) "movdqu xmm" #i ", [r12 + " #i "*32]\n"
#define STOREV(i) "vmovdqu [r12 + 512 + " #i "*32], ymm" #i "\n"
#define STOREX(i) "movdqu [r12 + 512 + " #i "*32], xmm" #i "\n"
#define ALL16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)

__asm__(".intel_syntax noprefix\n"
        ".text\n"
        ".globl fpu_hold\n"
        ".type fpu_hold, @function\n"
        "fpu_hold:\n"
        "push rbx\n push rbp\n push r12\n push r13\n push r14\n push r15\n"
        "mov r12, rdi\n"
        /* MXCSR and the x87 stack under its control word. */
        "ldmxcsr [r12 + 1024]\n"
        "fninit\n"
        "fldcw [r12 + 1032]\n"
        "fldpi\n"
        "fld tbyte ptr [r12 + 1040]\n"
        "fld tbyte ptr [r12 + 1056]\n"
        /* The vector registers. */
        "cmp dword ptr [r12 + 1036], 0\n"
        "je 1f\n" ALL16(LOADV) "jmp 2f\n"
        "1:\n" ALL16(LOADX) "2:\n"
        /* ready: open(tmp) write close rename, raw. */
        "mov eax, 2\n mov rdi, [r12 + 1144]\n mov esi, 0x80241\n mov edx, 0x1a4\n syscall\n"
        "test rax, rax\n js 8f\n"
        "mov r13, rax\n"
        "mov eax, 1\n mov rdi, r13\n mov rsi, [r12 + 1160]\n mov rdx, [r12 + 1168]\n syscall\n"
        "mov r14, rax\n"
        "mov eax, 3\n mov rdi, r13\n syscall\n"
        "cmp r14, [r12 + 1168]\n jne 7f\n"
        "mov eax, 82\n mov rdi, [r12 + 1144]\n mov rsi, [r12 + 1152]\n syscall\n"
        "test rax, rax\n jnz 8f\n"
        /* Poll: access(go, F_OK), nanosleep(10 ms). */
        "3:\n"
        "mov eax, 21\n mov rdi, [r12 + 1136]\n xor esi, esi\n syscall\n"
        "test rax, rax\n jz 4f\n"
        "mov eax, 35\n lea rdi, [r12 + 1176]\n xor esi, esi\n syscall\n"
        "inc qword ptr [r12 + 1128]\n"
        "jmp 3b\n"
        "7:\n mov r14, -5\n mov [r12 + 1192], r14\n jmp 4f\n"
        "8:\n mov [r12 + 1192], rax\n"
        "4:\n"
        /* Sabotage, for the checks' own test. */
        "mov rbx, [r12 + 1120]\n"
        "test rbx, 1\n jz 5f\n pxor xmm7, xmm6\n 5:\n"
        "test rbx, 2\n jz 5f\n cmp dword ptr [r12 + 1036], 0\n je 5f\n vinsertf128 ymm12, ymm12, xmm12, 1\n 5:\n"
        "test rbx, 4\n jz 5f\n sub rsp, 8\n stmxcsr [rsp]\n xor dword ptr [rsp], 0x6000\n ldmxcsr [rsp]\n add rsp, 8\n 5:\n"
        "test rbx, 8\n jz 5f\n fld1\n faddp st(1), st\n 5:\n"
        "test rbx, 16\n jz 5f\n sub rsp, 8\n fnstcw [rsp]\n xor word ptr [rsp], 0x0c00\n fldcw [rsp]\n add rsp, 8\n 5:\n"
        /* Store everything. */
        "cmp dword ptr [r12 + 1036], 0\n"
        "je 1f\n" ALL16(STOREV) "vzeroupper\n jmp 2f\n"
        "1:\n" ALL16(STOREX) "2:\n"
        "stmxcsr [r12 + 1028]\n"
        "fnstcw [r12 + 1034]\n"
        "fstp tbyte ptr [r12 + 1072]\n"
        "fstp tbyte ptr [r12 + 1088]\n"
        "fstp tbyte ptr [r12 + 1104]\n"
        /* Back to the ABI's defaults for the C code. */
        "fninit\n"
        "sub rsp, 8\n mov dword ptr [rsp], 0x1f80\n ldmxcsr [rsp]\n add rsp, 8\n"
        "pop r15\n pop r14\n pop r13\n pop r12\n pop rbp\n pop rbx\n"
        "ret\n"
        ".size fpu_hold, .-fpu_hold\n"
        ".att_syntax prefix\n");

/* pi as fldpi loads it under control word `cw`. */
static void fldpi_under(uint16_t cw, uint8_t out[16])
{
    __asm__ volatile("fninit\n\t"
                     "fldcw %1\n\t"
                     "fldpi\n\t"
                     "fstpt %0\n\t"
                     "fninit"
                     : "=m"(*(uint8_t(*)[10])out)
                     : "m"(cw));
}

static int cpu_has_avx(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & bit_AVX) || !(c & bit_OSXSAVE)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}

static const char *const KEYS_AVX[] = {"xmm", "ymm", "mxcsr", "x87", "fcw", NULL};
static const char *const KEYS_SSE[] = {"xmm", "mxcsr", "x87", "fcw", NULL};

static void hex(char *dst, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) sprintf(dst + 2 * i, "%02x", p[n - 1 - i]);
}

int main(int argc, char **argv)
{
    int avx = cpu_has_avx();
    target_init(argc, argv, avx ? KEYS_AVX : KEYS_SSE);

    static struct fpu_ctx ctx;
    uint64_t s = fresh_seed();
    for (int r = 0; r < 16; r++)
        for (int j = 0; j < 32; j += 8) {
            uint64_t v = xorshift64(&s);
            memcpy(&ctx.in[r][j], &v, 8);
        }
    ctx.mxcsr_in = 0xBF80; /* all exceptions masked, round down, flush to zero */
    ctx.fcw_in = 0x0B7F;   /* all exceptions masked, extended precision, round up */
    ctx.have_avx = (uint32_t)avx;
    for (int k = 0; k < 2; k++) {
        uint64_t mant = xorshift64(&s) | (1ULL << 63);  /* normalised 64-bit significand */
        uint16_t se = (uint16_t)(0x3fff + 5 + 7 * k) | (k ? 0x8000 : 0);
        memcpy(&ctx.x87_in[k][0], &mant, 8);
        memcpy(&ctx.x87_in[k][8], &se, 2);
    }
    if (sabotage("xmm")) ctx.sabotage |= SAB_XMM;
    if (avx && sabotage("ymm")) ctx.sabotage |= SAB_YMM;
    if (sabotage("mxcsr")) ctx.sabotage |= SAB_MXCSR;
    if (sabotage("x87")) ctx.sabotage |= SAB_X87;
    if (sabotage("fcw")) ctx.sabotage |= SAB_FCW;

    static char go[PATH_MAX], tmp[PATH_MAX + 8], ready[PATH_MAX], text[32];
    snprintf(go, sizeof go, "%s", wpath("go"));
    snprintf(ready, sizeof ready, "%s", wpath("ready"));
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    snprintf(text, sizeof text, "%d\n", (int)getpid());
    ctx.go_path = go;
    ctx.ready_tmp = tmp;
    ctx.ready_path = ready;
    ctx.ready_text = text;
    ctx.ready_len = strlen(text);
    ctx.ts.tv_sec = 0;
    ctx.ts.tv_nsec = 10 * 1000000L;
    write_filef("avx", "%d\n", avx);

    fpu_hold(&ctx);

    if (ctx.err) die("writing W/ready from assembly failed: %lld", (long long)ctx.err);
    mark_resumed();

    const size_t width = avx ? 32 : 16;
    for (int r = 0; r < 16; r++) {
        if (memcmp(ctx.in[r], ctx.out[r], 16) != 0) {
            char a[40], b[40];
            hex(a, ctx.in[r], 16);
            hex(b, ctx.out[r], 16);
            fail(avx ? "xmm" : "xmm", "xmm%d was %s, now %s", r, a, b);
        }
        if (width == 32 && memcmp(ctx.in[r] + 16, ctx.out[r] + 16, 16) != 0) {
            char a[40], b[40];
            hex(a, ctx.in[r] + 16, 16);
            hex(b, ctx.out[r] + 16, 16);
            fail("ymm", "upper half of ymm%d was %s, now %s", r, a, b);
        }
    }
    CHECK("mxcsr", ctx.mxcsr_out == ctx.mxcsr_in, "MXCSR was 0x%04x, now 0x%04x", ctx.mxcsr_in, ctx.mxcsr_out);
    CHECK("fcw", ctx.fcw_out == ctx.fcw_in, "x87 control word was 0x%04x, now 0x%04x", ctx.fcw_in, ctx.fcw_out);
    uint8_t pi[16] = {0};
    fldpi_under(ctx.fcw_in, pi);
    const uint8_t *want[3] = {ctx.x87_in[1], ctx.x87_in[0], pi};
    for (int k = 0; k < 3; k++) {
        if (memcmp(ctx.x87_out[k], want[k], 10) != 0) {
            char a[24], b[24];
            hex(a, want[k], 10);
            hex(b, ctx.x87_out[k], 10);
            fail("x87", "st%d was %s, now %s", k, a, b);
        }
    }
    return finish();
}
