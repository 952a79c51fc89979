/*
 * vdso_time: time through the vDSO keeps working after restore.
 * The wait loop reads CLOCK_MONOTONIC (libc, i.e. the vDSO) on every round.
 * After go: /proc/self/maps has [vdso] at the address the auxiliary vector
 * (AT_SYSINFO_EHDR, what libc uses) gives, and [vvar]; __vdso_clock_gettime
 * found in that vDSO's symbol table, libc's clock_gettime and the raw
 * syscall agree for CLOCK_MONOTONIC and CLOCK_REALTIME; monotonic time did not
 * go back and realtime is not before the checkpoint; time advances across a
 * 20 ms sleep as it should.
 */
#define TARGET_NAME "vdso_time"
#include "common.h"
#include <elf.h>
#include <sys/auxv.h>
#include <sys/syscall.h>

static const char *const KEYS[] = {"vdso_maps", "vdso_call", "libc_call", "monotonic", "realtime", "advance", NULL};

typedef int (*vdso_gettime_fn)(clockid_t, struct timespec *);

static volatile double last_mono;
static volatile int went_back;

static double ts_sec(const struct timespec *t) { return (double)t->tv_sec + (double)t->tv_nsec / 1e9; }

static double libc_now(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return ts_sec(&t);
}

static double sys_now(clockid_t c)
{
    struct timespec t;
    syscall(SYS_clock_gettime, c, &t);
    return ts_sec(&t);
}

static void tick(void)
{
    double now = libc_now(CLOCK_MONOTONIC);
    if (now < last_mono) went_back = 1;
    last_mono = now;
}

/* __vdso_clock_gettime in the vDSO mapped at `base`, via its section headers. */
static vdso_gettime_fn vdso_lookup(uintptr_t base)
{
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0) return NULL;
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(base + eh->e_phoff);
    intptr_t bias = 0;
    int have_load = 0;
    for (int i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type == PT_LOAD) {
            bias = (intptr_t)base + (intptr_t)ph[i].p_offset - (intptr_t)ph[i].p_vaddr;
            have_load = 1;
            break;
        }
    }
    if (!have_load || eh->e_shoff == 0) return NULL;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(base + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM) continue;
        const Elf64_Sym *sym = (const Elf64_Sym *)(base + sh[i].sh_offset);
        const char *str = (const char *)(base + sh[sh[i].sh_link].sh_offset);
        size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
        for (size_t k = 0; k < n; k++) {
            if (sym[k].st_name && strcmp(str + sym[k].st_name, "__vdso_clock_gettime") == 0 && sym[k].st_value)
                return (vdso_gettime_fn)(bias + (intptr_t)sym[k].st_value);
        }
    }
    return NULL;
}

/* Start address of the maps line labelled `label` ("[vdso]"), 0 when absent. */
static uintptr_t maps_label(const char *label)
{
    char *maps = read_self_maps();
    uintptr_t found = 0;
    for (char *line = maps; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t len = strlen(line), ll = strlen(label);
        if (len >= ll && strcmp(line + len - ll, label) == 0) {
            unsigned long s;
            if (sscanf(line, "%lx-", &s) == 1) found = s;
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(maps);
    return found;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    uintptr_t aux = getauxval(AT_SYSINFO_EHDR);
    if (!aux) die("no AT_SYSINFO_EHDR: no vDSO");
    if (!vdso_lookup(aux)) die("__vdso_clock_gettime not found in the vDSO");
    const double mono_ready = libc_now(CLOCK_MONOTONIC);
    const double real_ready = libc_now(CLOCK_REALTIME);
    last_mono = mono_ready;
    write_filef("time.before", "%.9f %.9f %#lx\n", mono_ready, real_ready, (unsigned long)aux);

    announce_ready();
    wait_go(tick);

    double mono_last = last_mono, mono_at_ready = mono_ready, real_at_ready = real_ready;
    uintptr_t aux_now = getauxval(AT_SYSINFO_EHDR);
    if (sabotage("vdso_maps")) aux_now += 4096;
    if (sabotage("monotonic")) mono_last += 1000;
    if (sabotage("realtime")) real_at_ready += 1000;

    uintptr_t vdso = maps_label("[vdso]");
    uintptr_t vvar = maps_label("[vvar]");
    CHECK("vdso_maps", vdso != 0 && vdso == aux_now && aux_now == aux,
          "[vdso] is at %#lx in maps, AT_SYSINFO_EHDR says %#lx (%#lx before)", (unsigned long)vdso,
          (unsigned long)aux_now, (unsigned long)aux);
    CHECK("vdso_maps", vvar != 0, "no [vvar] in maps");

    vdso_gettime_fn vg = vdso == aux ? vdso_lookup(aux) : NULL;
    CHECK("vdso_call", vg != NULL, "__vdso_clock_gettime not found after restore");
    static const clockid_t clocks[2] = {CLOCK_MONOTONIC, CLOCK_REALTIME};
    static const char *const names[2] = {"MONOTONIC", "REALTIME"};
    for (int i = 0; i < 2 && vg; i++) {
        struct timespec t;
        int rc = vg(clocks[i], &t);
        double v = ts_sec(&t) + (sabotage("vdso_call") ? 5.0 : 0.0);
        double s = sys_now(clocks[i]);
        CHECK("vdso_call", rc == 0 && v - s < 0.1 && s - v < 0.1,
              "vDSO CLOCK_%s returned %d: %.6f, the syscall %.6f", names[i], rc, v, s);
    }
    for (int i = 0; i < 2; i++) {
        double l = libc_now(clocks[i]) + (sabotage("libc_call") ? 5.0 : 0.0);
        double s = sys_now(clocks[i]);
        CHECK("libc_call", l - s < 0.1 && s - l < 0.1, "libc CLOCK_%s %.6f, the syscall %.6f", names[i], l, s);
    }

    double mono_now = libc_now(CLOCK_MONOTONIC);
    double real_now = libc_now(CLOCK_REALTIME);
    double file_mono = 0, file_real = 0;
    char buf[256];
    if (read_file("time.before", buf, sizeof buf) < 0 || sscanf(buf, "%lf %lf", &file_mono, &file_real) != 2)
        die("cannot read W/time.before");
    CHECK("monotonic", !went_back && mono_now >= mono_last && mono_now >= mono_at_ready && mono_now >= file_mono,
          "CLOCK_MONOTONIC went back: now %.6f, last before %.6f, at ready %.6f", mono_now, mono_last, mono_at_ready);
    CHECK("realtime", real_now >= real_at_ready && real_now >= file_real,
          "CLOCK_REALTIME %.6f is before its value at ready %.6f", real_now, real_at_ready);

    double t0 = libc_now(CLOCK_MONOTONIC);
    double v0 = 0;
    if (vg) {
        struct timespec t;
        vg(CLOCK_MONOTONIC, &t);
        v0 = ts_sec(&t);
    }
    if (!sabotage("advance")) sleep_ms(20);
    double t1 = libc_now(CLOCK_MONOTONIC);
    double v1 = 0;
    if (vg) {
        struct timespec t;
        vg(CLOCK_MONOTONIC, &t);
        v1 = ts_sec(&t);
    }
    CHECK("advance", t1 - t0 >= 0.019 && t1 - t0 < 5, "a 20 ms sleep took %.6f s by libc's CLOCK_MONOTONIC", t1 - t0);
    CHECK("advance", !vg || (v1 - v0 >= 0.019 && v1 - v0 < 5), "a 20 ms sleep took %.6f s by the vDSO", v1 - v0);

    return finish();
}
