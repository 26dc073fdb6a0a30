/* ubtool: exercises a container's beancounters from inside (static; built into the test rootfs
 * by hack/build-bundle). Each command prints one result line and exits 0, or prints why not.
 *   ubtool fork N          fork N children that sleep; print how many forks succeeded
 *   ubtool fds N           open /dev/null until N fds are open or it fails; print the count
 *   ubtool ptys N          open /dev/ptmx N times; print how many succeeded
 *   ubtool shm BYTES       shmget one segment of BYTES; print "ok" or the errno name
 *   ubtool hog MIB         touch MIB MiB of anonymous memory, 1 MiB at a time, print progress
 *   ubtool map FILE        mmap FILE shared read-only, touch every page, sleep forever
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: ubtool fork|fds|ptys|shm|hog|map ARG\n"); return 2; }
    const char *cmd = argv[1];
    long n = atol(argv[2]);
    if (!strcmp(cmd, "fork")) {
        long ok = 0;
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) break;
            ok++;
        }
        printf("forked %ld\n", ok);
        fflush(stdout);
        signal(SIGTERM, SIG_DFL);
        kill(0, SIGKILL); /* take the children with us */
        return 0;
    }
    if (!strcmp(cmd, "fds")) {
        long last = -1;
        for (;;) {
            int fd = open("/dev/null", O_RDONLY);
            if (fd < 0 || fd + 1 >= n) { if (fd >= 0) last = fd; break; }
            last = fd;
        }
        printf("highest fd %ld (%s)\n", last, errno ? strerror(errno) : "ok");
        return 0;
    }
    if (!strcmp(cmd, "ptys")) {
        long ok = 0;
        for (long i = 0; i < n; i++) {
            if (open("/dev/ptmx", O_RDWR | O_NOCTTY) < 0) { printf("opened %ld ptys (%s)\n", ok, strerror(errno)); return 0; }
            ok++;
        }
        printf("opened %ld ptys\n", ok);
        return 0;
    }
    if (!strcmp(cmd, "shm")) {
        int id = shmget(IPC_PRIVATE, (size_t)n, IPC_CREAT | 0600);
        if (id < 0) { printf("shmget %s\n", strerror(errno)); return 0; }
        shmctl(id, IPC_RMID, NULL);
        printf("shmget ok\n");
        return 0;
    }
    if (!strcmp(cmd, "hog")) {
        for (long i = 0; i < n; i++) {
            char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { printf("mmap failed at %ld MiB\n", i); return 0; }
            memset(p, 1, 1 << 20);
            printf("%ld\n", i + 1);
            fflush(stdout);
        }
        printf("hogged %ld MiB\n", n);
        return 0;
    }
    if (!strcmp(cmd, "map")) {
        int fd = open(argv[2], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) { printf("open %s: %s\n", argv[2], strerror(errno)); return 1; }
        volatile char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) { printf("mmap: %s\n", strerror(errno)); return 1; }
        long sum = 0;
        for (off_t o = 0; o < st.st_size; o += 4096) sum += p[o];
        printf("mapped %ld bytes\n", (long)st.st_size);
        fflush(stdout);
        for (;;) pause();
    }
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
