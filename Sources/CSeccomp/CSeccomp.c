// See CSeccomp.h. Raw system calls and a BPF program: plain C says them directly.
#define _GNU_SOURCE
#include "CSeccomp.h"
#include "CNodeSupport.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#if defined(__x86_64__)
#define BOXER_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define BOXER_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "boxer-mesh's seccomp supervisor knows x86_64 and aarch64"
#endif

/// Trapped system calls and what the node calls them. aarch64 has neither open() nor accept().
static const struct { long nr; boxer_sc_call call; } trapped[] = {
    {SYS_connect, BOXER_SC_CONNECT},         {SYS_bind, BOXER_SC_BIND},
    {SYS_listen, BOXER_SC_LISTEN},           {SYS_accept4, BOXER_SC_ACCEPT4},
    {SYS_getsockname, BOXER_SC_GETSOCKNAME}, {SYS_getpeername, BOXER_SC_GETPEERNAME},
    {SYS_openat, BOXER_SC_OPENAT},           {SYS_newfstatat, BOXER_SC_NEWFSTATAT},
    {SYS_getsockopt, BOXER_SC_GETSOCKOPT},
#ifdef SYS_accept
    {SYS_accept, BOXER_SC_ACCEPT},
#endif
#ifdef SYS_open
    {SYS_open, BOXER_SC_OPEN},
#endif
};
#define TRAPPED_COUNT (sizeof trapped / sizeof trapped[0])

static boxer_sc_call call_of(int nr) {
    for (size_t i = 0; i < TRAPPED_COUNT; i++)
        if (trapped[i].nr == nr) return trapped[i].call;
    return BOXER_SC_OTHER;
}

/// The low 32 bits of argument `i` (little-endian: x86_64 and aarch64).
#define ARG_LOW(i) (offsetof(struct seccomp_data, args) + 8 * (i))

/// Emits: if the call is `nr` and its argument `arg` has any of `bits` set, allow it without asking the node. The
/// node only wants opens that may read /etc/hosts and stats by path: glibc's fstat() is fstatat(fd, "",
/// AT_EMPTY_PATH), and writes and directory opens (a database, a directory walk) are many.
static size_t emit_pass_by_flags(struct sock_filter *program, size_t n, long nr, int arg, uint32_t bits) {
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 3);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(arg));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, bits, 0, 1);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return n;
}

/// Emits: if the call is `nr` and its arguments `first` and `second` are not `first_value` and `second_value`,
/// allow it without asking the node. getsockopt: the node wants only SOL_SOCKET/SO_ERROR, the call by which an app
/// learns that its non-blocking connect finished.
static size_t emit_pass_unless(struct sock_filter *program, size_t n, long nr, int first, uint32_t first_value,
                               int second, uint32_t second_value) {
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 5);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(first));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, first_value, 0, 2);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(second));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, second_value, 1, 0);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return n;
}

/// The filter: another architecture's calls (a 32-bit binary) pass untouched, as does every call not listed.
static int install_filter(void) {
    struct sock_filter program[3 + 3 * 5 + 7 + 1 + 2 * TRAPPED_COUNT + 1];
    size_t n = 0;
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, BOXER_AUDIT_ARCH, 1, 0);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    const uint32_t not_a_read = O_WRONLY | O_RDWR | O_DIRECTORY | O_PATH;
    n = emit_pass_by_flags(program, n, SYS_openat, 2, not_a_read);
    n = emit_pass_by_flags(program, n, SYS_newfstatat, 3, AT_EMPTY_PATH);
    n = emit_pass_unless(program, n, SYS_getsockopt, 1, SOL_SOCKET, 2, SO_ERROR);
#ifdef SYS_open
    n = emit_pass_by_flags(program, n, SYS_open, 1, not_a_read);
#endif
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (size_t i = 0; i < TRAPPED_COUNT; i++) {
        program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)trapped[i].nr, 0, 1);
        program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
    }
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog fprog = {.len = (unsigned short)n, .filter = program};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
}

/// Child → node over a socketpair: {stage, errno} on failure; on success the listener rides along (SCM_RIGHTS)
/// and exec's CLOEXEC closes the pair, which the node reads as "exec worked".
struct spawn_report { int stage; int error; };

static void send_report(int socket, int stage, int error, int fd) {
    struct spawn_report report = {stage, error};
    struct iovec io = {.iov_base = &report, .iov_len = sizeof report};
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr message = {.msg_iov = &io, .msg_iovlen = 1};
    if (fd >= 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = sizeof control.buffer;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(header), &fd, sizeof fd);
    }
    while (sendmsg(socket, &message, MSG_NOSIGNAL) < 0 && errno == EINTR) {}
}

/// Reads one report: 1 and the fields, 0 at end of file (exec worked), -1 on error.
static int read_report(int socket, struct spawn_report *report, int *fd) {
    struct iovec io = {.iov_base = report, .iov_len = sizeof *report};
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr message = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control.buffer,
                             .msg_controllen = sizeof control.buffer};
    ssize_t got;
    while ((got = recvmsg(socket, &message, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
    if (got <= 0) return (int)got;
    *fd = -1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header))
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) memcpy(fd, CMSG_DATA(header), sizeof *fd);
    return got == sizeof *report ? 1 : -1;
}

int boxer_seccomp_spawn(const char *program, char *const argv[], char *const envp[], int stdout_fd, int stderr_fd,
                        const int *reset, int reset_count, pid_t *pid, int *listener, int *stage) {
    int pair[2];
    *stage = 0;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return errno;
    pid_t child = fork();
    if (child < 0) {
        int error = errno;
        close(pair[0]);
        close(pair[1]);
        return error;
    }
    if (child == 0) {
        // Only async-signal-safe calls from here: the node has many threads.
        close(pair[0]);
        int report = pair[1];
        // Above 2 first (a node started with 0, 1 or 2 closed gets the pair there), or a dup2 below clobbers it.
        if (report < 3) report = fcntl(report, F_DUPFD_CLOEXEC, 3);
        if (stdout_fd >= 0 && stdout_fd != 1) dup2(stdout_fd, 1);
        if (stderr_fd >= 0 && stderr_fd != 2) dup2(stderr_fd, 2);
        // Everything from 3 up but the report socket (CLOEXEC: exec closes it).
        if (report > 3) syscall(SYS_close_range, 3, report - 1, 0);
        syscall(SYS_close_range, report + 1, ~0U, 0);
        for (int i = 0; i < reset_count; i++) signal(reset[i], SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int fd = install_filter();
        if (fd < 0) {
            send_report(report, 1, errno, -1);
            _exit(127);
        }
        send_report(report, -1, 0, fd);
        close(fd);  // the app must not hold its own listener
        execvpe(program, argv, envp);
        send_report(report, 2, errno, -1);
        _exit(127);
    }
    close(pair[1]);
    struct spawn_report first = {0, 0}, second = {0, 0};
    int fd = -1, unused = -1, result = 0;
    int got = read_report(pair[0], &first, &fd);
    if (got != 1 || first.stage >= 0) {
        result = got == 1 ? first.error : EPIPE;
        *stage = got == 1 ? first.stage : 1;
    } else if (read_report(pair[0], &second, &unused) == 1) {
        result = second.error;
        *stage = second.stage;
        if (unused >= 0) close(unused);
    }
    close(pair[0]);
    if (result != 0) {
        if (fd >= 0) close(fd);
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        return result;
    }
    *pid = child;
    *listener = fd;
    return 0;
}

int boxer_sc_receive(int listener, int timeout_ms, boxer_sc_notification *out) {
    struct pollfd poller = {.fd = listener, .events = POLLIN};
    int ready = poll(&poller, 1, timeout_ms);
    if (ready < 0) return errno == EINTR ? 0 : -1;
    if (ready == 0) return 0;
    if (!(poller.revents & POLLIN)) {
        errno = (poller.revents & POLLHUP) ? EPIPE : EBADF;
        return -1;
    }
    // The kernel's struct may be bigger than this header's: ask for its size once.
    static struct seccomp_notif_sizes sizes;
    if (sizes.seccomp_notif == 0 && syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) return -1;
    char buffer[sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif : sizeof(struct seccomp_notif)];
    memset(buffer, 0, sizeof buffer);
    struct seccomp_notif *request = (struct seccomp_notif *)buffer;
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, request) != 0)
        return (errno == EINTR || errno == ENOENT) ? 0 : -1;  // ENOENT: the caller died meanwhile
    out->id = request->id;
    out->pid = (pid_t)request->pid;
    out->call = request->data.arch == BOXER_AUDIT_ARCH ? call_of(request->data.nr) : BOXER_SC_OTHER;
    for (int i = 0; i < 6; i++) out->args[i] = request->data.args[i];
    return 1;
}

static int respond(int listener, uint64_t id, int64_t value, int error, unsigned flags) {
    struct seccomp_notif_resp response = {.id = id, .val = value, .error = error ? -error : 0, .flags = flags};
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &response);
}

int boxer_sc_continue(int listener, uint64_t id) {
    return respond(listener, id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
}

int boxer_sc_reply(int listener, uint64_t id, int64_t value, int error) { return respond(listener, id, value, error, 0); }

int boxer_sc_inject(int listener, uint64_t id, int fd, int target, int cloexec, int send) {
    struct seccomp_notif_addfd addfd = {
        .id = id, .srcfd = (uint32_t)fd, .newfd = target >= 0 ? (uint32_t)target : 0,
        .flags = target >= 0 ? SECCOMP_ADDFD_FLAG_SETFD : 0, .newfd_flags = cloexec ? O_CLOEXEC : 0};
    if (send) {
        addfd.flags |= SECCOMP_ADDFD_FLAG_SEND;
        int number = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
        if (number >= 0 || errno != EINVAL) return number;
        addfd.flags &= ~SECCOMP_ADDFD_FLAG_SEND;  // before Linux 5.14: add, then answer
    }
    int number = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
    if (number < 0 || !send) return number;
    return respond(listener, id, number, 0, 0) == 0 ? number : -1;
}

int boxer_sc_valid(int listener, uint64_t id) { return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0; }

int boxer_sc_fd_cloexec(pid_t pid, int fd) {
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", pid, fd);
    if (boxer_read_proc_text(path, text, sizeof text) < 0) return -1;
    const char *flags = strstr(text, "flags:");
    if (!flags) { errno = EINVAL; return -1; }
    return (strtoul(flags + 6, NULL, 8) & O_CLOEXEC) != 0;
}

int boxer_sc_read(pid_t pid, uint64_t address, void *buffer, size_t length) {
    struct iovec local = {.iov_base = buffer, .iov_len = length};
    struct iovec remote = {.iov_base = (void *)(uintptr_t)address, .iov_len = length};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (got < 0) return -1;
    if ((size_t)got != length) { errno = EFAULT; return -1; }
    return 0;
}

int boxer_sc_write(pid_t pid, uint64_t address, const void *buffer, size_t length) {
    struct iovec local = {.iov_base = (void *)buffer, .iov_len = length};
    struct iovec remote = {.iov_base = (void *)(uintptr_t)address, .iov_len = length};
    ssize_t put = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (put < 0) return -1;
    if ((size_t)put != length) { errno = EFAULT; return -1; }
    return 0;
}

ssize_t boxer_sc_read_string(pid_t pid, uint64_t address, char *buffer, size_t capacity) {
    size_t have = 0;
    while (have + 1 < capacity) {
        size_t to_page = 4096 - ((address + have) & 4095);
        size_t chunk = to_page < capacity - 1 - have ? to_page : capacity - 1 - have;
        if (boxer_sc_read(pid, address + have, buffer + have, chunk) != 0) return -1;
        char *end = memchr(buffer + have, 0, chunk);
        if (end) return end - buffer;
        have += chunk;
    }
    errno = ENAMETOOLONG;
    return -1;
}

int boxer_sc_probe(const char **missing) {
    unsigned action = SECCOMP_RET_USER_NOTIF;
    if (syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) != 0) {
        *missing = "seccomp user notification (SECCOMP_RET_USER_NOTIF, Linux 5.0)";
        return errno;
    }
    // A descriptor that cannot exist: EBADF says both calls are there, ENOSYS (or a filter's EPERM) that one is not.
    int copy = boxer_take_app_fd(getpid(), -1);
    if (copy >= 0) close(copy);
    if (copy >= 0 || errno != EBADF) {
        *missing = "pidfd_getfd (Linux 5.6)";
        return errno;
    }
    *missing = NULL;
    return 0;
}
