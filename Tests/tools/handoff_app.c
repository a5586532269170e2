// Streams both ways over one TCP connection in a chosen app pattern, for the handoff lab tests: each end sends a
// deterministic byte stream for SECONDS, shuts down writing, and writes every byte it receives to stdout (pipe it
// into sha256sum) until end of stream.
//
//   handoff_app MODE serve PORT SECONDS          accept one connection on PORT
//   handoff_app MODE connect HOST PORT SECONDS   connect to HOST (a mesh name) and PORT
//   handoff_app generate SEED BYTES              the first BYTES bytes of stream SEED (the server sends seed 2,
//                                                the client seed 1)
// MODE: blocking  a reader thread blocked in recv(); the main thread writes paced chunks
//       epoll     one thread, a non-blocking socket in an epoll loop, paced writes
//       writer    a writer thread that never pauses (blocking send); the main thread reads
//       forked    a forked child streams as in blocking mode; the parent keeps the socket open until the child exits
// stderr: "connected"/"accepted" once the connection is up, "sent N" at the end. Exit status 0 unless a call failed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 16384
#define PACE_US 2000  // one chunk every 2 ms: 8 MB/s, so a relayed stream outlives the upgrade

static uint64_t state;

// xorshift64*: the stream of seed s is the same in every process.
static void fill(unsigned char *buffer, size_t size) {
    for (size_t i = 0; i < size; i++) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        buffer[i] = (unsigned char)((state * 0x2545F4914F6CDD1DULL) >> 56);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "handoff_app: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int fd;
static double seconds;
static unsigned long long sent;

static void write_stdout(const unsigned char *bytes, size_t n) {
    if (fwrite(bytes, 1, n, stdout) != n) die("stdout");
}

static void send_all(const unsigned char *bytes, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, bytes, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) die("send");
        bytes += k;
        n -= (size_t)k;
        sent += (unsigned long long)k;
    }
}

static void *reader(void *unused) {
    (void)unused;
    static unsigned char buffer[65536];
    for (;;) {
        ssize_t n = recv(fd, buffer, sizeof buffer, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("recv");
        if (n == 0) return NULL;
        write_stdout(buffer, (size_t)n);
    }
}

static void *writer(void *paced) {
    static unsigned char chunk[CHUNK];
    double end = now() + seconds;
    while (now() < end) {
        fill(chunk, sizeof chunk);
        send_all(chunk, sizeof chunk);
        if (paced) usleep(PACE_US);
    }
    if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
    return NULL;
}

static void threads(bool paced_writer_in_main) {
    pthread_t thread;
    if (paced_writer_in_main) {
        if (pthread_create(&thread, NULL, reader, NULL)) die("pthread_create");
        writer((void *)1);
    } else {
        if (pthread_create(&thread, NULL, writer, NULL)) die("pthread_create");
        reader(NULL);
    }
    pthread_join(thread, NULL);
}

static void epoll_loop(void) {
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = 7};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &event) < 0) die("epoll");
    static unsigned char chunk[CHUNK], buffer[65536];
    size_t offset = CHUNK;  // nothing pending
    double end = now() + seconds, next = now();
    bool writing = true, eof = false, want_out = false;
    while (!eof || writing) {
        struct epoll_event ready;
        int n = epoll_wait(ep, &ready, 1, 1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        if (n > 0 && ready.data.u64 != 7) {
            fprintf(stderr, "handoff_app: epoll data %llu, not 7\n", (unsigned long long)ready.data.u64);
            exit(1);
        }
        for (;;) {
            ssize_t k = recv(fd, buffer, sizeof buffer, 0);
            if (k > 0) {
                write_stdout(buffer, (size_t)k);
                continue;
            }
            if (k == 0) eof = true;
            else if (errno != EAGAIN && errno != EINTR) die("recv");
            break;
        }
        if (writing && offset == CHUNK && now() >= next) {
            if (now() >= end) {
                if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
                writing = false;
            } else {
                fill(chunk, sizeof chunk);
                offset = 0;
                next += PACE_US / 1e6;
            }
        }
        while (writing && offset < CHUNK) {
            ssize_t k = send(fd, chunk + offset, CHUNK - offset, MSG_NOSIGNAL);
            if (k > 0) {
                offset += (size_t)k;
                sent += (unsigned long long)k;
                continue;
            }
            if (errno != EAGAIN && errno != EINTR) die("send");
            break;
        }
        bool out = writing && offset < CHUNK;
        if (out != want_out) {
            event.events = EPOLLIN | (out ? EPOLLOUT : 0);
            if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &event) < 0) die("epoll_ctl MOD");
            want_out = out;
        }
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "generate")) {
        state = strtoull(argv[2], NULL, 10);
        unsigned long long left = strtoull(argv[3], NULL, 10);
        static unsigned char chunk[CHUNK];
        while (left > 0) {
            fill(chunk, sizeof chunk);
            size_t n = left < CHUNK ? (size_t)left : CHUNK;
            write_stdout(chunk, n);
            left -= n;
        }
        return 0;
    }
    bool serve = argc == 5 && !strcmp(argv[2], "serve");
    if (!serve && !(argc == 6 && !strcmp(argv[2], "connect"))) {
        fprintf(stderr, "usage: handoff_app blocking|epoll|writer|forked serve PORT SECONDS | connect HOST PORT SECONDS\n");
        return 2;
    }
    const char *mode = argv[1];
    seconds = atof(argv[argc - 1]);
    if (serve) {
        int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
        int one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 1) < 0) die("listen");
        fprintf(stderr, "listening on %s\n", argv[3]);
        fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) die("accept");
        fprintf(stderr, "accepted\n");
        state = 2;
    } else {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *found;
        int error = getaddrinfo(argv[3], argv[4], &hints, &found);
        if (error) {
            fprintf(stderr, "handoff_app: %s: %s\n", argv[3], gai_strerror(error));
            return 1;
        }
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, found->ai_addr, found->ai_addrlen) < 0) die("connect");
        freeaddrinfo(found);
        fprintf(stderr, "connected\n");
        state = 1;
    }
    if (!strcmp(mode, "forked")) {
        // The parent holds the socket (as a pre-fork server does) while its child uses it.
        pid_t child = fork();
        if (child < 0) die("fork");
        if (child > 0) {
            int status;
            if (waitpid(child, &status, 0) < 0) die("waitpid");
            return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        }
        threads(true);
    } else if (!strcmp(mode, "blocking")) threads(true);
    else if (!strcmp(mode, "writer")) threads(false);
    else if (!strcmp(mode, "epoll")) epoll_loop();
    else {
        fprintf(stderr, "handoff_app: unknown mode %s\n", mode);
        return 2;
    }
    if (fflush(stdout) != 0) die("stdout");
    fprintf(stderr, "sent %llu\n", sent);
    return 0;
}
