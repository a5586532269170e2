// The app's descriptors, copied into the node (pidfd_getfd), and resetting a socket the app holds, found by its
// inode (see CNodeSupport.h). /proc walking and raw system calls: plain C is shorter than Swift here.
#define _GNU_SOURCE
#include "CNodeSupport.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

int boxer_each_fd(pid_t pid, int (*visit)(int fd, const char *target, void *context), void *context) {
    char path[64], target[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *fds = opendir(path);
    if (!fds) return -1;
    int result = 0;
    for (struct dirent *entry; result == 0 && (entry = readdir(fds));) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%d/fd/%s", pid, entry->d_name);
        ssize_t length = readlink(path, target, sizeof target - 1);
        if (length <= 0) continue;
        target[length] = 0;
        result = visit(atoi(entry->d_name), target, context);
    }
    closedir(fds);
    return result;
}

struct socket_search { char expected[48]; int found; };

static int match_socket(int fd, const char *target, void *context) {
    struct socket_search *search = context;
    if (strcmp(target, search->expected) != 0) return 0;
    search->found = fd;
    return 1;
}

/// The descriptor number in `pid` that holds the socket `inode`, or -1.
static int find_in_process(pid_t pid, uint64_t inode) {
    struct socket_search search = {.found = -1};
    snprintf(search.expected, sizeof search.expected, "socket:[%" PRIu64 "]", inode);
    boxer_each_fd(pid, match_socket, &search);
    return search.found;
}

ssize_t boxer_read_proc_text(const char *path, char *text, size_t size) {
    int file = open(path, O_RDONLY | O_CLOEXEC);
    if (file < 0) return -1;
    ssize_t length = read(file, text, size - 1);
    int error = errno;
    close(file);
    if (length <= 0) {
        errno = length == 0 ? ENODATA : error;
        return -1;
    }
    text[length] = 0;
    return length;
}

int boxer_take_app_fd(pid_t pid, int fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 && (errno == EINVAL || errno == ENOENT)) {
        // pidfd_open wants a process, not a thread (EINVAL before Linux 6.9, ENOENT since, without PIDFD_THREAD):
        // the descriptor table is the thread group's anyway.
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/status", pid);
        char text[4096];
        if (boxer_read_proc_text(path, text, sizeof text) < 0) return -1;
        const char *tgid = strstr(text, "\nTgid:");
        if (!tgid) { errno = ESRCH; return -1; }
        pidfd = (int)syscall(SYS_pidfd_open, atoi(tgid + 6), 0);
    }
    if (pidfd < 0) return -1;
    int copy = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    int error = errno;
    close(pidfd);
    errno = error;
    return copy;
}

int boxer_reset_app_socket(uint64_t inode) {
    DIR *processes = opendir("/proc");
    if (!processes) return -1;
    int result = 0, error = ESRCH;
    for (struct dirent *entry; result == 0 && (entry = readdir(processes));) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        int fd = find_in_process(atoi(entry->d_name), inode);
        if (fd < 0) continue;
        int copy = boxer_take_app_fd(atoi(entry->d_name), fd);
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
    }
    closedir(processes);
    if (result < 0 || result == 0) errno = error;
    return result;
}
