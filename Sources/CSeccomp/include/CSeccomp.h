// Seccomp user notification for apps the preload shim cannot reach (static and Go binaries): the node starts the
// app with a filter that hands a few socket and file calls to the node, and acts on them with the app's own
// descriptors (CNodeSupport's boxer_take_app_fd) or injects one (SECCOMP_IOCTL_NOTIF_ADDFD). Linked into the node,
// never into an app.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// The system calls the filter hands to the node; every other call runs untouched.
typedef enum {
    BOXER_SC_OTHER = 0,
    BOXER_SC_CONNECT,
    BOXER_SC_BIND,
    BOXER_SC_LISTEN,
    BOXER_SC_ACCEPT,      // accept(fd, addr, addrlen): flags 0
    BOXER_SC_ACCEPT4,
    BOXER_SC_GETSOCKNAME,
    BOXER_SC_GETPEERNAME,
    BOXER_SC_OPEN,        // open(path, flags, mode)
    BOXER_SC_OPENAT,      // openat(dirfd, path, flags, mode)
    BOXER_SC_NEWFSTATAT,  // newfstatat(dirfd, path, statbuf, flags): Go checks /etc/hosts' mtime and size
    BOXER_SC_GETSOCKOPT,  // getsockopt(fd, SOL_SOCKET, SO_ERROR, value, length) only: a non-blocking connect's end
} boxer_sc_call;

/// One trapped call, as the kernel reports it.
typedef struct {
    uint64_t id;        // the notification's cookie: every answer names it
    pid_t pid;          // the calling thread (its id in the node's pid namespace)
    boxer_sc_call call;
    uint64_t args[6];
} boxer_sc_notification;

/// Forks, installs the filter in the child (needs only no_new_privs), and execs `program` (looked up in envp's
/// PATH as execvpe does) with `argv` and `envp`. In the child: `stdout_fd`/`stderr_fd` (if >= 0) become 1 and 2,
/// descriptors from 3 up are closed, the signals in `reset` get their default disposition and none is blocked.
/// On success returns 0 and stores the child's pid and the filter's listener (CLOEXEC) in the node. Otherwise
/// returns an errno: `*stage` says where it failed (0 fork, 1 the filter: seccomp refused or unsupported, 2 exec)
/// and nothing is left running.
int boxer_seccomp_spawn(const char *program, char *const argv[], char *const envp[], int stdout_fd, int stderr_fd,
                        const int *reset, int reset_count, pid_t *pid, int *listener, int *stage);

/// Waits up to `timeout_ms` for the next trapped call. 1: `*out` filled; 0: nothing yet (timeout, or the caller
/// was gone before it could be read); -1 with errno set: the listener is unusable, or (EPIPE) no process is left
/// under the filter.
int boxer_sc_receive(int listener, int timeout_ms, boxer_sc_notification *out);

/// Lets the trapped call run as if there were no filter.
int boxer_sc_continue(int listener, uint64_t id);

/// Answers the trapped call without running it: it returns `value`, or fails with `error` when that is not 0.
int boxer_sc_reply(int listener, uint64_t id, int64_t value, int error);

/// Puts a copy of `fd` into the caller of `id`: at `target` (replacing what is there, like dup2) or, with
/// `target` < 0, at the lowest free number. With `send`, the trapped call returns that number at once (atomic:
/// Linux 5.14; older kernels get an ADDFD and a reply). Returns the number in the app, or -1 with errno.
int boxer_sc_inject(int listener, uint64_t id, int fd, int target, int cloexec, int send);

/// Whether the notification `id` is still pending (its caller was not interrupted or killed).
int boxer_sc_valid(int listener, uint64_t id);

/// Whether descriptor `fd` of process `pid` (any thread id) is close-on-exec (its /proc fdinfo "flags"): 1 or 0,
/// -1 with errno set when that cannot be read.
int boxer_sc_fd_cloexec(pid_t pid, int fd);

/// Reads `length` bytes at `address` in `pid` (process_vm_readv). Returns 0, or -1 with errno set.
int boxer_sc_read(pid_t pid, uint64_t address, void *buffer, size_t length);

/// Writes `length` bytes at `address` in `pid` (process_vm_writev). Returns 0, or -1 with errno set.
int boxer_sc_write(pid_t pid, uint64_t address, const void *buffer, size_t length);

/// Reads a NUL-terminated string at `address` in `pid` into `buffer` (at most `capacity` - 1 bytes, page by page
/// so an unmapped page after the string does not matter). Returns its length, or -1 with errno (ENAMETOOLONG).
ssize_t boxer_sc_read_string(pid_t pid, uint64_t address, char *buffer, size_t capacity);

/// Whether this kernel offers what the supervisor needs: 0, or the errno of the first thing missing, with
/// `*missing` naming it.
int boxer_sc_probe(const char **missing);

// MARK: Non-blocking connects (StandIn.c)

/// Moves the app's epoll registrations of one descriptor to another file: every epoll instance of process `pid`
/// (any thread id) that watches descriptor `app_fd` while it is the file `from` (a copy in the node) gets the same
/// registration — events, flags and data — for `to`, under the same number `app_fd`, so the app's later
/// EPOLL_CTL_MOD/DEL on `app_fd` find it once `to` is put there. Call before `to` replaces `from` in the app (epoll
/// drops a registration when its file closes). Returns how many were carried, or -1 with errno set.
int boxer_sc_carry_epoll(pid_t pid, int app_fd, int from, int to);

/// A connected loopback TCP pair that stands in for the app's socket while its non-blocking connect is made: the
/// app's end (`*app_end`) has its send queue filled, so it is neither readable nor writable, as a socket in
/// SYN_SENT. `*filled` is the bytes queued. Returns 0, or -1 with errno set.
int boxer_stand_in_open(int *app_end, int *node_end, size_t *filled);

/// Reads the `filled` bytes at `node_end` (waiting up to `timeout_ms` for them to cross), which makes the app's end
/// writable: its connect finished. Returns 0, or -1 with errno set.
int boxer_stand_in_drain(int node_end, size_t filled, int timeout_ms);

/// Copies bytes both ways between two connected stream sockets until both directions have ended (an end-of-file is
/// passed on as a shutdown for writing; an error ends both), then closes both. Blocking: call on a thread of its own.
/// Returns the bytes copied from `a` to `b` and from `b` to `a` in `*ab` and `*ba`.
void boxer_bridge(int a, int b, uint64_t *ab, uint64_t *ba);

/// Socket options the app set, to carry to the socket that replaces its own: those of a short list (SO_KEEPALIVE
/// and its TCP timers, TCP_NODELAY, TCP_USER_TIMEOUT, IP_TOS, SO_PRIORITY) whose value differs from a fresh TCP
/// socket's. The app's setsockopt calls are not trapped, so a value the app set to the default cannot be told from
/// one it never set: either way the replacement keeps its own (a direct link's keepalive, say).
typedef struct {
    int count;
    struct { int level, name, value; } set[8];
} boxer_socket_options;

/// Reads the options of `fd` that differ from a fresh socket's into `*options`.
void boxer_socket_options_read(int fd, boxer_socket_options *options);

/// Sets `options` on `fd` (best effort).
void boxer_socket_options_apply(const boxer_socket_options *options, int fd);
