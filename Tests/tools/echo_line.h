// What the C test tools share: report a failed call, and echo one line through a connected socket.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

// Prints the failed call with errno's text; returns the tool's failure status.
static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    return 1;
}

// Writes `line` to the blocking socket `fd`, reads as many bytes back (going on after EINTR) and prints
// "echo: LINE"; 0 if they match, 1 with the failing call on standard error otherwise.
static int echo_line(int fd, const char *line) {
    size_t length = strlen(line);
    char echo[128];
    if (length >= sizeof echo) return 1;
    if (write(fd, line, length) != (ssize_t)length) return fail("write");
    size_t have = 0;
    while (have < length) {
        ssize_t got = read(fd, echo + have, sizeof echo - 1 - have);
        if (got < 0 && errno == EINTR) continue;
        if (got == 0) {
            fprintf(stderr, "read: end of stream after %zu bytes\n", have);
            return 1;
        }
        if (got < 0) return fail("read");
        have += (size_t)got;
    }
    echo[have] = 0;
    printf("echo: %s", echo);
    return strcmp(echo, line) == 0 ? 0 : 1;
}
