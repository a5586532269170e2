// Resetting a socket the app holds, found by its inode (see CNodeSupport.h). /proc walking and two raw system
// calls: plain C is shorter than Swift here.
#define _GNU_SOURCE
#include "CNodeSupport.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/// The descriptor number in `pid` that holds the socket `inode`, or -1.
static int find_in_process(const char *pid, uint64_t inode) {
    char path[64], target[64], expected[48];
    snprintf(path, sizeof path, "/proc/%s/fd", pid);
    snprintf(expected, sizeof expected, "socket:[%" PRIu64 "]", inode);
    DIR *fds = opendir(path);
    if (!fds) return -1;
    int found = -1;
    for (struct dirent *entry; found < 0 && (entry = readdir(fds));) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/fd/%s", pid, entry->d_name);
        ssize_t length = readlink(path, target, sizeof target - 1);
        if (length <= 0) continue;
        target[length] = 0;
        if (strcmp(target, expected) == 0) found = atoi(entry->d_name);
    }
    closedir(fds);
    return found;
}

int boxer_reset_app_socket(uint64_t inode) {
    DIR *processes = opendir("/proc");
    if (!processes) return -1;
    int result = 0, error = ESRCH;
    for (struct dirent *entry; result == 0 && (entry = readdir(processes));) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        int fd = find_in_process(entry->d_name, inode);
        if (fd < 0) continue;
        int pidfd = (int)syscall(SYS_pidfd_open, atoi(entry->d_name), 0);
        int copy = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
        if (copy < 0) {
            error = errno;
            result = -1;
        } else {
            // connect(AF_UNSPEC) disconnects a TCP socket: its queues are dropped and every call the app makes on it
            // (or is blocked in) fails with ECONNRESET; the RST it sends goes nowhere, the peer is gone.
            struct sockaddr unspecified = {.sa_family = AF_UNSPEC};
            result = connect(copy, &unspecified, sizeof unspecified) == 0 ? 1 : -1;
            error = errno;
            close(copy);
        }
        if (pidfd >= 0) close(pidfd);
    }
    closedir(processes);
    if (result < 0 || result == 0) errno = error;
    return result;
}
