// Non-blocking connects under the supervisor (see CSeccomp.h): a loopback pair stands in for the app's socket while
// the node makes the link, the app's epoll registrations follow the file that replaces it, and a bridge serves an
// app that used the stand-in before it asked whether its connect finished.
#define _GNU_SOURCE
#include "CSeccomp.h"
#include "CNodeSupport.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

// MARK: epoll registrations

/// One registration to carry: the node's copy of the app's epoll instance, and what was registered.
struct registration { int epoll; uint32_t events; uint64_t data; };

struct carry_job { int app_fd, to, count, carried, error; struct registration *registrations; };

/// Reads a whole /proc file (an epoll instance's fdinfo has a line per registration). Free the result.
static char *read_all(const char *path) {
    int file = open(path, O_RDONLY | O_CLOEXEC);
    if (file < 0) return NULL;
    size_t size = 0, capacity = 4096;
    char *text = malloc(capacity);
    for (ssize_t got = 1; text && got > 0;) {
        if (capacity - size < 2048) {
            char *grown = realloc(text, capacity *= 2);
            if (!grown) { free(text); text = NULL; break; }
            text = grown;
        }
        got = read(file, text + size, capacity - size - 1);
        if (got > 0) size += (size_t)got;
        else if (got < 0) { free(text); text = NULL; }
    }
    close(file);
    if (text) text[size] = 0;
    return text;
}

/// On a thread of its own with a private descriptor table (unshare(CLONE_FILES)), so `to` can sit at the app's
/// number: epoll keys a registration by file and number, and the app's EPOLL_CTL_MOD/DEL name its number.
static void *carry(void *argument) {
    struct carry_job *job = argument;
    if (unshare(CLONE_FILES) != 0) { job->error = errno; return NULL; }
    for (int i = 0; i < job->count; i++)  // an epoll copy that sits at the app's number moves out of the way
        if (job->registrations[i].epoll == job->app_fd) job->registrations[i].epoll = fcntl(job->app_fd, F_DUPFD_CLOEXEC, 0);
    if (job->to != job->app_fd && dup2(job->to, job->app_fd) < 0) { job->error = errno; return NULL; }
    for (int i = 0; i < job->count; i++) {
        struct epoll_event interest = {.events = job->registrations[i].events, .data.u64 = job->registrations[i].data};
        if (epoll_ctl(job->registrations[i].epoll, EPOLL_CTL_ADD, job->app_fd, &interest) == 0) job->carried++;
        else job->error = errno;
    }
    return NULL;  // the private table, and what this thread put in it, goes with the thread
}

/// What ``boxer_sc_carry_epoll`` looks for, and what it found.
struct epoll_search { pid_t pid; int app_fd; unsigned long long inode; int count; struct registration found[16]; };

/// One of the app's descriptors: if it is an epoll instance, its registrations of the app's descriptor and file.
static int find_registrations(int fd, const char *target, void *context) {
    struct epoll_search *search = context;
    if (strcmp(target, "anon_inode:[eventpoll]") != 0) return 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", search->pid, fd);
    char *info = read_all(path);
    if (!info) return 0;
    // "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x", one line per registration
    for (char *line = strstr(info, "tfd:"); line && search->count < 16; line = strstr(line + 4, "\ntfd:")) {
        if (*line == '\n') line++;
        int number;
        unsigned events;
        unsigned long long data, inode;
        long long position;
        if (sscanf(line, "tfd: %d events: %x data: %llx pos:%lli ino:%llx", &number, &events, &data, &position,
                   &inode) != 5 || number != search->app_fd || inode != search->inode)
            continue;
        int copy = boxer_take_app_fd(search->pid, fd);
        if (copy >= 0) search->found[search->count++] = (struct registration){copy, events, data};
    }
    free(info);
    return search->count == 16;
}

int boxer_sc_carry_epoll(pid_t pid, int app_fd, int from, int to) {
    struct stat file;
    if (fstat(from, &file) != 0) return -1;
    struct epoll_search search = {.pid = pid, .app_fd = app_fd, .inode = (unsigned long long)file.st_ino};
    if (boxer_each_fd(pid, find_registrations, &search) < 0) return -1;
    int count = search.count;
    struct registration *found = search.found;
    if (count == 0) return 0;
    struct carry_job job = {.app_fd = app_fd, .to = to, .count = count, .registrations = found};
    pthread_t thread;
    int started = pthread_create(&thread, NULL, carry, &job);
    if (started == 0) pthread_join(thread, NULL);
    for (int i = 0; i < count; i++) close(found[i].epoll);
    if (started != 0) { errno = started; return -1; }
    if (job.carried < count) { errno = job.error; return -1; }
    return job.carried;
}

// MARK: The stand-in pair

int boxer_stand_in_open(int *app_end, int *node_end, size_t *filled) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), app = -1, node = -1;
    if (listener < 0) return -1;
    // The smallest buffers (the kernel rounds up): a few KiB fill the app's end.
    int smallest = 1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &smallest, sizeof smallest) != 0 ||  // the accepted end's too
        bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0)
        goto failed;
    app = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (app < 0 || setsockopt(app, SOL_SOCKET, SO_SNDBUF, &smallest, sizeof smallest) != 0 ||
        connect(app, (struct sockaddr *)&address, sizeof address) != 0)
        goto failed;
    node = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (node < 0) goto failed;
    close(listener);
    listener = -1;
    static const char zeros[4096];
    size_t total = 0;
    for (int round = 0; round < 256; round++) {
        ssize_t sent = send(app, zeros, sizeof zeros, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent > 0) { total += (size_t)sent; continue; }
        if (errno != EAGAIN) goto failed;
        struct pollfd writable = {.fd = app, .events = POLLOUT};
        if (poll(&writable, 1, 0) == 0) {
            *app_end = app;
            *node_end = node;
            *filled = total;
            return 0;
        }
    }
    errno = ENOBUFS;
failed:;
    int error = errno;
    if (listener >= 0) close(listener);
    if (app >= 0) close(app);
    if (node >= 0) close(node);
    errno = error;
    return -1;
}

int boxer_stand_in_drain(int node_end, size_t filled, int timeout_ms) {
    char buffer[4096];
    while (filled > 0) {
        ssize_t got = recv(node_end, buffer, filled < sizeof buffer ? filled : sizeof buffer, MSG_DONTWAIT);
        if (got > 0) { filled -= (size_t)got; continue; }
        if (got == 0) { errno = ECONNRESET; return -1; }
        if (errno != EAGAIN && errno != EINTR) return -1;
        struct pollfd readable = {.fd = node_end, .events = POLLIN};
        if (poll(&readable, 1, timeout_ms) == 0) { errno = ETIMEDOUT; return -1; }
    }
    return 0;
}

// MARK: The bridge

/// One direction of the bridge.
struct direction { int from, to; size_t start, end; bool open; uint64_t moved; char buffer[65536]; };

/// Moves what it can without blocking. False on an error.
static bool step(struct direction *d) {
    if (d->open && d->start == d->end) {
        ssize_t got = recv(d->from, d->buffer, sizeof d->buffer, MSG_DONTWAIT);
        if (got > 0) { d->start = 0; d->end = (size_t)got; }
        else if (got == 0) d->open = false;
        else if (errno != EAGAIN && errno != EINTR) return false;
    }
    if (d->start < d->end) {
        ssize_t put = send(d->to, d->buffer + d->start, d->end - d->start, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (put > 0) { d->start += (size_t)put; d->moved += (uint64_t)put; }
        else if (errno != EAGAIN && errno != EINTR) return false;
    }
    return true;
}

static bool finished(const struct direction *d) { return !d->open && d->start == d->end; }

void boxer_bridge(int a, int b, uint64_t *ab, uint64_t *ba) {
    struct direction *there = calloc(1, sizeof *there), *back = calloc(1, sizeof *back);
    if (there && back) {
        *there = (struct direction){.from = a, .to = b, .open = true};
        *back = (struct direction){.from = b, .to = a, .open = true};
        bool shut_there = false, shut_back = false;
        while (step(there) && step(back)) {
            if (finished(there) && !shut_there) { shutdown(b, SHUT_WR); shut_there = true; }
            if (finished(back) && !shut_back) { shutdown(a, SHUT_WR); shut_back = true; }
            if (shut_there && shut_back) break;
            struct pollfd ends[2] = {{.fd = a}, {.fd = b}};
            if (there->open && there->start == there->end) ends[0].events |= POLLIN;
            if (there->start < there->end) ends[1].events |= POLLOUT;
            if (back->open && back->start == back->end) ends[1].events |= POLLIN;
            if (back->start < back->end) ends[0].events |= POLLOUT;
            for (int i = 0; i < 2; i++)  // an end with nothing to wait for would report its hang-up again and again
                if (ends[i].events == 0) ends[i].fd = -1;
            if (poll(ends, 2, -1) < 0 && errno != EINTR) break;
        }
        *ab = there->moved;
        *ba = back->moved;
    }
    free(there);
    free(back);
    close(a);
    close(b);
}

// MARK: Socket options

static const struct { int level, name; } carried_options[8] = {
    {SOL_SOCKET, SO_KEEPALIVE}, {IPPROTO_TCP, TCP_KEEPIDLE}, {IPPROTO_TCP, TCP_KEEPINTVL}, {IPPROTO_TCP, TCP_KEEPCNT},
    {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_TCP, TCP_USER_TIMEOUT}, {IPPROTO_IP, IP_TOS}, {SOL_SOCKET, SO_PRIORITY},
};

static int option_value(int fd, int index) {
    int value = 0;
    socklen_t length = sizeof value;
    return getsockopt(fd, carried_options[index].level, carried_options[index].name, &value, &length) == 0 ? value : 0;
}

/// A fresh TCP socket's values of the carried options, read once.
static int defaults[8];

static void read_defaults(void) {
    int fresh = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    for (int i = 0; i < 8; i++) defaults[i] = fresh >= 0 ? option_value(fresh, i) : 0;
    if (fresh >= 0) close(fresh);
}

void boxer_socket_options_read(int fd, boxer_socket_options *options) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, read_defaults);
    options->count = 0;
    for (int i = 0; i < 8; i++) {
        int value = option_value(fd, i);
        if (value == defaults[i]) continue;
        options->set[options->count].level = carried_options[i].level;
        options->set[options->count].name = carried_options[i].name;
        options->set[options->count++].value = value;
    }
}

void boxer_socket_options_apply(const boxer_socket_options *options, int fd) {
    for (int i = 0; i < options->count; i++)
        setsockopt(fd, options->set[i].level, options->set[i].name, &options->set[i].value, sizeof(int));
}
