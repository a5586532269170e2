// What a single-threaded event loop sees of a non-blocking connect under the seccomp supervisor: the socket is
// registered with epoll BEFORE connect() (as nginx does), then the loop waits for it to become writable.
//
//     event_loop_connect ADDRESS PORT    prints, one per line:
//         "connect: 0" or "connect: <strerror>"   what the non-blocking connect() returned
//         "registered before: N events"          epoll_wait (1 s) on the registration made before connect()
//         "modify: ok" or "modify: <strerror>"   EPOLL_CTL_MOD on that registration
//         "registered after: N events"           epoll_wait (5 s) after registering the descriptor again
//         "echo: LINE"                           one line sent and read back
//     exit 0 if the echo matches, 1 with the failing call on standard error otherwise
// Built -static by the test, so `boxer-mesh node --interpose auto` puts it under the seccomp supervisor.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo_line.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &peer.sin_addr) != 1) return fail("inet_pton");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), loop = epoll_create1(0);
    if (fd < 0 || loop < 0) return fail("socket/epoll_create1");
    struct epoll_event interest = {.events = EPOLLOUT, .data.fd = fd}, ready;
    if (epoll_ctl(loop, EPOLL_CTL_ADD, fd, &interest) != 0) return fail("epoll_ctl ADD");
    int connected = connect(fd, (struct sockaddr *)&peer, sizeof peer);
    printf("connect: %s\n", connected == 0 ? "0" : strerror(errno));
    if (connected != 0 && errno != EINPROGRESS) return 1;
    printf("registered before: %d events\n", epoll_wait(loop, &ready, 1, 1000));
    printf("modify: %s\n", epoll_ctl(loop, EPOLL_CTL_MOD, fd, &interest) == 0 ? "ok" : strerror(errno));
    epoll_ctl(loop, EPOLL_CTL_ADD, fd, &interest);  // EEXIST where the registration survived
    printf("registered after: %d events\n", epoll_wait(loop, &ready, 1, 5000));
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 || error != 0) {
        errno = error;
        return fail("connect (SO_ERROR)");
    }
    fcntl(fd, F_SETFL, 0);
    return echo_line(fd, "hello from the event loop\n");
}
