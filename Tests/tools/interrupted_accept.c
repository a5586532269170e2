// Accepts under a storm of signals: a 1 ms interval timer whose SIGALRM handler has no SA_RESTART, so every blocking
// accept() the timer catches returns EINTR and is made again. Each connection accepted gets one line echoed.
//
//     interrupted_accept PORT COUNT     accepts COUNT connections on PORT (any address), echoing a line on each;
//                                       prints "listening", then "accepted COUNT after N interruptions"; exit 0,
//                                       or 1 with the failing call on standard error
// Built -static by the test, so `boxer-mesh node --interpose auto` puts it under the seccomp supervisor.
#include <errno.h>
#include <netinet/in.h>
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
        fprintf(stderr, "usage: %s PORT COUNT\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int listener = socket(AF_INET, SOCK_STREAM, 0), on = 1, count = atoi(argv[2]);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 64) != 0)
        return fail("listen");
    printf("listening\n");
    struct sigaction action = {.sa_handler = on_alarm};  // no SA_RESTART: interrupted calls return EINTR
    if (sigaction(SIGALRM, &action, NULL) != 0) return fail("sigaction");
    struct itimerval every_ms = {.it_interval = {0, 1000}, .it_value = {0, 1000}};
    if (setitimer(ITIMER_REAL, &every_ms, NULL) != 0) return fail("setitimer");
    long interruptions = 0;
    for (int accepted = 0; accepted < count;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) {
            if (errno != EINTR) return fail("accept");
            interruptions++;
            continue;
        }
        char line[128];
        ssize_t got;
        size_t have = 0;
        // The line, however the signals split the reads.
        while (have < sizeof line - 1 && (got = read(client, line + have, sizeof line - 1 - have)) != 0) {
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) return fail("read");
            have += (size_t)got;
            if (line[have - 1] == '\n') break;
        }
        for (size_t sent = 0; sent < have;) {
            ssize_t put = write(client, line + sent, have - sent);
            if (put < 0 && errno == EINTR) continue;
            if (put < 0) return fail("write");
            sent += (size_t)put;
        }
        close(client);
        accepted++;
    }
    printf("accepted %d after %ld interruptions\n", count, interruptions);
    return 0;
}
