/*
 * threads_attrs: scheduling attributes Linux keeps per thread. Three workers
 * each set their own before ready: a nice value (setpriority on their TID:
 * 3, 6 and 9, raising it needs no privilege), a timer slack
 * (PR_SET_TIMERSLACK: 100, 200 and 300 us) and a CPU affinity (the CPU
 * numbered i modulo the CPUs this process may use); the last one also runs
 * under SCHED_BATCH (no privilege needed). The main thread keeps nice 0,
 * the default slack, SCHED_OTHER and every CPU. After go each thread checks
 * its own four values.
 */
#define TARGET_NAME "threads_attrs"
#include "threads_common.h"
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static const char *const KEYS[] = {"nice", "slack", "affinity", "policy", NULL};

#define NW 3

struct attrs {
    int nice;
    int policy;
    long slack;
    cpu_set_t cpus;
};

static struct attrs want[NW + 1]; /* [NW]: the main thread */
static volatile int set_done[NW];
static volatile int go_seen;

static void read_attrs(struct attrs *a)
{
    errno = 0;
    a->nice = getpriority(PRIO_PROCESS, (id_t)kernel_tid());
    a->slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    a->policy = sched_getscheduler(0);
    CPU_ZERO(&a->cpus);
    sched_getaffinity(0, sizeof a->cpus, &a->cpus);
}

static void check(const char *who, int idx)
{
    struct attrs now;
    read_attrs(&now);
    if (sabotage("nice") && idx == 1) now.nice++;
    if (sabotage("slack") && idx == 2) now.slack++;
    if (sabotage("affinity") && idx == 0) CPU_XOR(&now.cpus, &now.cpus, &now.cpus);
    if (sabotage("policy") && idx == NW - 1) now.policy = SCHED_OTHER;
    TCHECK("policy", now.policy == want[idx].policy, "%s: scheduling policy %d, was %d", who, now.policy, want[idx].policy);
    TCHECK("nice", now.nice == want[idx].nice, "%s: nice %d, was %d", who, now.nice, want[idx].nice);
    TCHECK("slack", now.slack == want[idx].slack, "%s: timer slack %ld ns, was %ld", who, now.slack, want[idx].slack);
    TCHECK("affinity", CPU_EQUAL(&now.cpus, &want[idx].cpus), "%s: CPU affinity of %d CPUs (first %d), was %d CPUs (first %d)", who,
           CPU_COUNT(&now.cpus), CPU_ISSET(0, &now.cpus) ? 0 : 1, CPU_COUNT(&want[idx].cpus), CPU_ISSET(0, &want[idx].cpus) ? 0 : 1);
}

static void *worker(void *arg)
{
    int i = (int)(uintptr_t)arg;
    if (setpriority(PRIO_PROCESS, (id_t)kernel_tid(), 3 * (i + 1)) != 0) DIE_ERRNO("setpriority");
    if (prctl(PR_SET_TIMERSLACK, 100000UL * (unsigned long)(i + 1), 0, 0, 0) != 0) DIE_ERRNO("PR_SET_TIMERSLACK");
    cpu_set_t all, one;
    CPU_ZERO(&all);
    if (sched_getaffinity(0, sizeof all, &all) != 0) DIE_ERRNO("sched_getaffinity");
    int n = CPU_COUNT(&all), k = i % n, cpu = -1;
    for (int c = 0; c < CPU_SETSIZE && cpu < 0; c++)
        if (CPU_ISSET(c, &all) && k-- == 0) cpu = c;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) DIE_ERRNO("sched_setaffinity");
    struct sched_param sp = {0};
    if (i == NW - 1 && sched_setscheduler(0, SCHED_BATCH, &sp) != 0) DIE_ERRNO("sched_setscheduler");
    read_attrs(&want[i]);
    set_done[i] = 1;
    while (!go_seen) sleep_ms(10);
    char who[32];
    snprintf(who, sizeof who, "worker %d", i);
    check(who, i);
    return NULL;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    read_attrs(&want[NW]);
    pthread_t th[NW];
    for (int i = 0; i < NW; i++)
        if (pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i) != 0) die("pthread_create");
    for (int i = 0; i < NW; i++)
        while (!set_done[i]) sleep_ms(1);
    announce_ready();
    wait_go(NULL);
    check("main", NW);
    go_seen = 1;
    for (int i = 0; i < NW; i++) TCHECK("nice", join_within(th[i], 5, NULL) == 0, "worker %d could not be joined", i);
    return finish();
}
