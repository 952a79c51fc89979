/*
 * fd_inotify: an inotify instance at fd 10 (O_NONBLOCK, close-on-exec) with
 * watches on W (IN_DELETE, wd 1), W/watched.txt
 * (IN_MODIFY|IN_ONESHOT, wd 2), W/sub (wd 3, removed again: a gap) and
 * W/sub2 (IN_ALL_EVENTS, wd 4); no event queued at the checkpoint.
 * After go: fdinfo lists the same watches (wd, inode, mask); no event is
 * queued; a file deleted from W is reported by wd 1, a write to watched.txt by wd 2 once (one-shot), a
 * file created in W/sub2 by wd 4; a new watch gets wd 5.
 * With the argument "queued", one event is left queued at the checkpoint (a
 * checkpoint must refuse it); the target reads it first after go.
 */
#define TARGET_NAME "fd_inotify"
#include "fd_common.h"
#include <sys/inotify.h>

static const char *const KEYS[] = {"watches", "events", "oneshot", "nextwd", "flags", NULL};

static int cmp_str(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* "wd:ino:mask" of each watch in fdinfo, sorted. */
static void watches(int fd, char *out, size_t cap)
{
    char buf[8192], items[16][96];
    int n = 0;
    fdinfo(fd, buf, sizeof buf);
    for (char *l = buf; *l && n < 16;) {
        char *nl = strchr(l, '\n');
        unsigned wd, mask;
        unsigned long ino;
        if (sscanf(l, "inotify wd:%x ino:%lx sdev:%*x mask:%x", &wd, &ino, &mask) == 3) snprintf(items[n++], sizeof items[0], "%u:%lx:%x", wd, ino, mask);
        if (!nl) break;
        l = nl + 1;
    }
    qsort(items, (size_t)n, sizeof items[0], cmp_str);
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) used += (size_t)snprintf(out + used, cap - used, "%s ", items[i]);
}

/* Reads the queued events; returns how many, and the wd and mask of the first few. */
static int events(int fd, int *wds, unsigned *masks, int max)
{
    char buf[4096] __attribute__((aligned(8)));
    int n = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) break;
        for (char *p = buf; p < buf + r;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (n < max) wds[n] = e->wd, masks[n] = e->mask;
            n++;
            p += sizeof *e + e->len;
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    target_init(argc, argv, KEYS);
    write_file("watched.txt", "x", 1);
    write_file("victim", "v", 1);
    if (mkdir(wpath("sub"), 0700) != 0 || mkdir(wpath("sub2"), 0700) != 0) DIE_ERRNO("mkdir");
    put_at(inotify_init1(IN_NONBLOCK | IN_CLOEXEC), 10, 1);
    int w1 = inotify_add_watch(10, wpath(""), IN_DELETE);
    int w2 = inotify_add_watch(10, wpath("watched.txt"), IN_MODIFY | IN_ONESHOT);
    int w3 = inotify_add_watch(10, wpath("sub"), IN_CREATE);
    int w4 = inotify_add_watch(10, wpath("sub2"), IN_ALL_EVENTS);
    if (w1 != 1 || w2 != 2 || w3 != 3 || w4 != 4) die("unexpected wds %d %d %d %d", w1, w2, w3, w4);
    inotify_rm_watch(10, w3);
    int wds[8];
    unsigned masks[8];
    events(10, wds, masks, 8); /* the IN_IGNORED of wd 3 */
    char before[512];
    watches(10, before, sizeof before);
    int queued = argc > 2 && strcmp(argv[2], "queued") == 0;
    if (queued) {
        write_file("queued-victim", "q", 1);
        unlink(wpath("queued-victim"));
    }
    announce_ready();
    wait_go(NULL);
    if (queued && events(10, wds, masks, 8) != 1) die("the queued event was not there");

    if (sabotage("watches")) inotify_add_watch(10, wpath("sub"), IN_CREATE);
    if (sabotage("events")) inotify_rm_watch(10, 1);
    if (sabotage("oneshot")) inotify_add_watch(10, wpath("watched.txt"), IN_MODIFY);
    if (sabotage("nextwd")) { inotify_add_watch(10, "/", IN_ACCESS); }
    if (sabotage("flags")) fcntl(10, F_SETFD, 0);

    CHECK("flags", status_flags(10) == (O_RDONLY | O_NONBLOCK) && is_cloexec(10) == 1, "fd 10: flags 0%o, close-on-exec %d", status_flags(10), is_cloexec(10));
    char after[512];
    watches(10, after, sizeof after);
    CHECK("watches", strcmp(before, after) == 0, "watches (wd:inode:mask) were '%s', now '%s'", before, after);
    int pending = events(10, wds, masks, 8);
    CHECK("events", pending == 0, "%d events were queued after go", pending);
    unlink(wpath("victim"));                   /* IN_DELETE in W */
    append_file("watched.txt", "y");           /* IN_MODIFY on watched.txt: one-shot */
    append_file("watched.txt", "z");
    write_filef("sub2/f", "%d", 1);
    int n = events(10, wds, masks, 8);
    int create1 = 0, modify2 = 0, ignored2 = 0, sub4 = 0, other = 0;
    for (int i = 0; i < n && i < 8; i++) {
        if (wds[i] == 1 && (masks[i] & IN_DELETE)) create1++;
        else if (wds[i] == 2 && (masks[i] & IN_MODIFY)) modify2++;
        else if (wds[i] == 2 && (masks[i] & IN_IGNORED)) ignored2++;
        else if (wds[i] == 4) sub4++;
        else other++;
    }
    CHECK("events", create1 >= 1 && sub4 >= 1 && other == 0, "%d events: wd1 delete %d, wd4 %d, other %d", n, create1, sub4, other);
    CHECK("oneshot", modify2 == 1 && ignored2 == 1, "watched.txt: %d modify events (want 1), %d IN_IGNORED (want 1)", modify2, ignored2);
    int w5 = inotify_add_watch(10, wpath("sub"), IN_CREATE);
    CHECK("nextwd", w5 == 5, "a new watch got wd %d (want 5)", w5);
    return finish();
}
