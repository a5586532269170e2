// Socket plumbing the node (and the broker's splice port) needs that Swift cannot express well: abstract AF_UNIX
// addresses, SCM_RIGHTS, splice(2). Linked into the boxer-mesh binary; this is NOT the preload shim (that one lives in CMeshShim, built with cc).
#pragma once
#include <stddef.h>
#include <sys/types.h>

/// A new anonymous memory file (memfd_create, close-on-exec) named `name`; -1 with errno set on failure.
int boxer_memory_file(const char *name);

/// Creates a listening AF_UNIX SOCK_SEQPACKET socket at `name` ("@x" = abstract "x", else a path), CLOEXEC.
/// Returns the fd, or -1 with errno set.
int boxer_listen_seqpacket(const char *name);

/// Connects an AF_UNIX SOCK_SEQPACKET socket to `name` (as above). Returns the fd, or -1 with errno set.
int boxer_connect_seqpacket(const char *name);

/// Sends one datagram; the `count` (at most 2) descriptors in `fds` ride along as SCM_RIGHTS; `flags` are
/// sendmsg's (MSG_NOSIGNAL is always added). Returns bytes sent or -1.
ssize_t boxer_send_with_fds(int socket, const void *data, size_t length, const int *fds, size_t count, int flags);

/// Receives one datagram; a descriptor that rides along is stored in `*fd` (else -1), with FD_CLOEXEC set.
ssize_t boxer_receive_with_fd(int socket, void *buffer, size_t capacity, int *fd);

/// splice(in, NULL, out, NULL, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK): one of the two is a pipe. Bytes moved,
/// 0 at the source's end, or -1 with errno set (EAGAIN: nothing to move now).
ssize_t boxer_splice(int in, int out, size_t length);

/// A non-blocking, close-on-exec pipe, grown towards `capacity` bytes; returns its capacity, or -1 with errno set.
int boxer_pipe_cloexec(int ends[2], int capacity);

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC), which Swift's Glibc module does not expose. -1 with errno on failure.
int boxer_accept_cloexec(int fd);

// ---- TCP socket counters from the kernel's sock_diag (NETLINK_SOCK_DIAG), for the tap's flow and close events.
// The node hands each connection's socket to the app and keeps no copy (else the app's close() would send no FIN),
// so it finds the socket again in the kernel's tables by its cookie (SO_COOKIE, unique per socket per boot).

#include <stdint.h>

/// One TCP socket as sock_diag reports it.
typedef struct {
    uint64_t cookie;
    uint8_t state;             // TCP_ESTABLISHED, ... (linux/tcp.h)
    uint64_t bytes_acked;      // sent by the app and acknowledged by the peer (tcpi_bytes_acked)
    uint64_t bytes_received;   // received from the peer (tcpi_bytes_received)
    uint32_t rtt_us;           // smoothed round trip (tcpi_rtt)
} boxer_tcp_counters;

/// Whether a TCP socket in this network namespace listens on `port` at 0.0.0.0, 127.0.0.1 or ::, the listeners a
/// connection to 127.0.0.1 reaches: 1 or 0, or -1 with errno set. Walks only the kernel's listener table, so sockets
/// coming and going meanwhile cannot hide one (as they can from a read of /proc/net/tcp).
int boxer_tcp_listening(uint16_t port);

/// Reads the start of a small file (a /proc status or fdinfo file) into `text`, NUL-terminated: its length, or -1
/// with errno set (an empty file counts as a failure: /proc never has one).
ssize_t boxer_read_proc_text(const char *path, char *text, size_t size);

/// Calls `visit` with each descriptor of process `pid` (any thread id) and what /proc says it is ("socket:[123]",
/// "anon_inode:[eventpoll]", a path), until `visit` returns non-zero. Returns that value, 0 when every descriptor was
/// visited, or -1 with errno set when the process's descriptors cannot be read.
int boxer_each_fd(pid_t pid, int (*visit)(int fd, const char *target, void *context), void *context);

/// A copy of descriptor `fd` of process `pid` (any thread id: the descriptor table is the process's):
/// pidfd_open + pidfd_getfd (Linux 5.6; needs ptrace access to that process), CLOEXEC. -1 with errno set.
int boxer_take_app_fd(pid_t pid, int fd);

/// Resets the TCP socket with inode `inode` wherever this process may reach it (the node's own app, same user): the
/// first process found holding it lends a copy through pidfd_getfd (Linux 5.6; needs ptrace access to that
/// process), and connect(AF_UNSPEC) on the copy disconnects it, so the app's calls on it fail with ECONNRESET.
/// Returns 1, 0 when no process holds it (errno ESRCH), or -1 with errno set (EPERM: not allowed here).
int boxer_reset_app_socket(uint64_t inode);

/// The socket's cookie (SO_COOKIE); 0 when the kernel cannot tell.
uint64_t boxer_socket_cookie(int fd);

/// Counters of the TCP sockets (IPv4 and IPv6) in this network namespace, except listeners and TIME_WAIT: up to
/// `capacity` into `out`. Returns how many sockets there are (more than `capacity`: ask again with more room), or
/// -1 with errno set.
int boxer_tcp_dump(boxer_tcp_counters *out, int capacity);

/// A non-blocking netlink socket that hears of every TCP socket destroyed in this network namespace, with its
/// final counters (SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY). -1 with errno where not allowed.
int boxer_tcp_destroy_listen(void);

/// Reads pending destroy notices from `fd` into `out`, as many datagrams as surely fit in `capacity` (give at least
/// 512). Returns how many (0: none pending), or -1 with errno set. Call again until it returns 0.
int boxer_tcp_destroy_read(int fd, boxer_tcp_counters *out, int capacity);
