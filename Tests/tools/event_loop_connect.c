// What a single-threaded event loop sees of a non-blocking connect under the seccomp supervisor: the socket is
// registered with epoll BEFORE connect() (as nginx and libuv do), the loop waits on that registration for
// writability, asks SO_ERROR, then waits on the same registration for the echo's reply.
//
//     event_loop_connect ADDRESS PORT [write-first]
//     prints, one per line:
//         "connect: <strerror>"                 what the non-blocking connect() returned (EINPROGRESS expected)
//         "writable: N events, data kept"       epoll_wait (10 s) on the registration made before connect()
//         "SO_ERROR: <strerror>"                getsockopt(SO_ERROR) — left out with write-first, which writes at
//                                               once, as an app that never asks does
//         "peer: ADDRESS:PORT"                  getpeername
//         "nodelay: N"                          TCP_NODELAY, which the tool set to 1 before connect()
//         "readable: N events, data kept"       after the line is written and the registration modified to EPOLLIN
//         "echo: LINE"                          the line read back
//     exit 0 if the echo matches, 1 with the failing call on standard error otherwise
// Built -static by the test, so `boxer-mesh node --interpose auto` puts it under the seccomp supervisor.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo_line.h"

/// The registration's data: not the descriptor number, so a registration made anew would show.
#define MARK 0x5eed0000feedull

static void wait_for(int loop, const char *what, int timeout_ms) {
    struct epoll_event ready = {0};
    int count = epoll_wait(loop, &ready, 1, timeout_ms);
    printf("%s: %d events, data %s\n", what, count, count == 1 && ready.data.u64 == MARK ? "kept" : "lost");
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s ADDRESS PORT [write-first]\n", argv[0]);
        return 2;
    }
    int write_first = argc == 4 && strcmp(argv[3], "write-first") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &peer.sin_addr) != 1) return fail("inet_pton");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), loop = epoll_create1(0);
    if (fd < 0 || loop < 0) return fail("socket/epoll_create1");
    int on = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) return fail("setsockopt TCP_NODELAY");
    struct epoll_event interest = {.events = EPOLLOUT, .data.u64 = MARK};
    if (epoll_ctl(loop, EPOLL_CTL_ADD, fd, &interest) != 0) return fail("epoll_ctl ADD");
    int connected = connect(fd, (struct sockaddr *)&peer, sizeof peer);
    printf("connect: %s\n", connected == 0 ? "0" : strerror(errno));
    if (connected != 0 && errno != EINPROGRESS) return 1;
    wait_for(loop, "writable", 10000);
    if (!write_first) {
        int error = 0;
        socklen_t length = sizeof error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) return fail("getsockopt");
        printf("SO_ERROR: %s\n", error == 0 ? "0" : strerror(error));
        if (error != 0) return 1;
    }
    const char *line = "hello from the event loop\n";
    if (write(fd, line, strlen(line)) != (ssize_t)strlen(line)) return fail("write");
    struct sockaddr_in name;
    socklen_t name_length = sizeof name;
    if (getpeername(fd, (struct sockaddr *)&name, &name_length) != 0) return fail("getpeername");
    char text[INET_ADDRSTRLEN];
    printf("peer: %s:%d\n", inet_ntop(AF_INET, &name.sin_addr, text, sizeof text), ntohs(name.sin_port));
    int nodelay = 0;
    socklen_t nodelay_length = sizeof nodelay;
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &nodelay_length) != 0) return fail("getsockopt TCP_NODELAY");
    printf("nodelay: %d\n", nodelay);
    interest.events = EPOLLIN;
    if (epoll_ctl(loop, EPOLL_CTL_MOD, fd, &interest) != 0) return fail("epoll_ctl MOD");
    wait_for(loop, "readable", 10000);
    char echo[128];
    ssize_t got = read(fd, echo, sizeof echo - 1);
    if (got <= 0) return fail("read");
    echo[got] = 0;
    printf("echo: %s", echo);
    return strcmp(echo, line) == 0 ? 0 : 1;
}
