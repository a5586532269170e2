// A connect under a storm of signals: a 1 ms interval timer whose SIGALRM handler has no SA_RESTART, so every
// connect() the timer catches returns EINTR and is made again (as a program that is not Go does; Go's SIGURG
// handler has SA_RESTART, and the kernel makes the call again itself). Then one line is echoed.
//
//     interrupted_connect ADDRESS PORT     prints "connected after N interruptions" and "echo: LINE"; exit 0 if
//                                          the echo matches, 1 with the failing call on standard error otherwise
// Built -static by the test, so `boxer-mesh node --interpose auto` puts it under the seccomp supervisor.
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "echo_line.h"

static void on_alarm(int signal) { (void)signal; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &peer.sin_addr) != 1) return fail("inet_pton");
    struct sigaction action = {.sa_handler = on_alarm};  // no SA_RESTART: interrupted calls return EINTR
    if (sigaction(SIGALRM, &action, NULL) != 0) return fail("sigaction");
    struct itimerval every_ms = {.it_interval = {0, 1000}, .it_value = {0, 1000}};
    if (setitimer(ITIMER_REAL, &every_ms, NULL) != 0) return fail("setitimer");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return fail("socket");
    long interruptions = 0;
    for (;;) {
        if (connect(fd, (struct sockaddr *)&peer, sizeof peer) == 0 || errno == EISCONN) break;
        if (errno != EINTR && errno != EALREADY) return fail("connect");
        interruptions++;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("connected after %ld interruptions\n", interruptions);
    return echo_line(fd, "hello through the signals\n");
}
