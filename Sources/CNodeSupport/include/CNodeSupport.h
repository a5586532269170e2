// Socket plumbing the node needs that Swift cannot express well: abstract AF_UNIX addresses and SCM_RIGHTS.
// Linked into the node binary; this is NOT the preload shim (that one lives in CMeshShim, built with cc).
#pragma once
#include <stddef.h>
#include <sys/types.h>

/// Creates a listening AF_UNIX SOCK_SEQPACKET socket at `name` ("@x" = abstract "x", else a path), CLOEXEC.
/// Returns the fd, or -1 with errno set.
int boxer_listen_seqpacket(const char *name);

/// Connects an AF_UNIX SOCK_SEQPACKET socket to `name` (as above). Returns the fd, or -1 with errno set.
int boxer_connect_seqpacket(const char *name);

/// Sends one datagram; with `fd >= 0`, that descriptor rides along as SCM_RIGHTS. Returns bytes sent or -1.
ssize_t boxer_send_with_fd(int socket, const void *data, size_t length, int fd);

/// Receives one datagram; a descriptor that rides along is stored in `*fd` (else -1), with FD_CLOEXEC set.
ssize_t boxer_receive_with_fd(int socket, void *buffer, size_t capacity, int *fd);

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC), which Swift's Glibc module does not expose. -1 with errno on failure.
int boxer_accept_cloexec(int fd);
