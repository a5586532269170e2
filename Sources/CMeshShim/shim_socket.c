// socket/bind/listen/accept and getsockname/getpeername.
//
// Servers: a socket listening on "any" (or the mesh address) is announced with ShimListen. The node makes each
// arriving mesh connection wake the app by opening a "signal connection" from 127.77.0.1 to 127.0.0.1:port;
// accept() recognises it, trades it for the real connection (ShimTakeAccepted) and returns that instead.
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define SIGNAL_SOURCE 0x7f4d0001u  // 127.77.0.1, reserved for the node's signal connections

SHIM_EXPORT int socket(int domain, int type, int protocol) {
    int fd = real.socket(domain, type, protocol);
    if (fd < 0 || !shim_enabled()) return fd;
    bool tcp = (domain == AF_INET || domain == AF_INET6) &&
               (type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP);
    if ((!tcp && !shim_fd_tracked(fd)) || shim_in_vfork_child()) return fd;
    pthread_mutex_lock(&shim_lock);
    shim_fd_forget_locked(fd);  // a stale entry (the number was closed where the shim could not see it)
    if (tcp) {
        // Every TCP socket may still connect into the mesh: track its options and epoll registrations.
        struct shim_sock *sock = shim_sock_new(SHIM_TCP, domain);
        if (sock) shim_fd_set_locked(fd, sock);
    }
    pthread_mutex_unlock(&shim_lock);
    return fd;
}

// The kernel has no interface with the mesh address: bind to "any" instead.
SHIM_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    uint32_t ip;
    uint16_t port;
    if (!shim_enabled() || !shim_sockaddr_ipv4(addr, len, &ip, &port) || ip != shim_cfg.mesh_ip ||
        len > (socklen_t)sizeof(struct sockaddr_storage)) {
        return real.bind(fd, addr, len);
    }
    struct sockaddr_storage any;
    memcpy(&any, addr, len);
    if (any.ss_family == AF_INET) ((struct sockaddr_in *)&any)->sin_addr.s_addr = htonl(INADDR_ANY);
    else ((struct sockaddr_in6 *)&any)->sin6_addr = in6addr_any;
    int rc = real.bind(fd, (struct sockaddr *)&any, len);
    int saved = errno;
    SHIM_DEBUG("bind fd %d to the mesh address, port %u: bound to any%s%s", fd, port, rc < 0 ? ": " : "",
               rc < 0 ? strerror(saved) : "");
    if (rc == 0) {
        pthread_mutex_lock(&shim_lock);
        struct shim_sock *sock = shim_fd_adopt_tcp_locked(fd);
        if (sock) sock->bound_mesh = true;
        pthread_mutex_unlock(&shim_lock);
    }
    errno = saved;
    return rc;
}

// The port to announce for a listening socket: it must take connections on 127.0.0.1 (where the node's
// signal connections go) and on the mesh address, i.e. be bound to "any". 0 otherwise.
static uint16_t mesh_listen_port(int fd) {
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (real.getsockname(fd, (struct sockaddr *)&local, &len) < 0) return 0;
    if (local.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&local;
        return in->sin_addr.s_addr == htonl(INADDR_ANY) ? ntohs(in->sin_port) : 0;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&local;
    if (local.ss_family != AF_INET6 || !IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) return 0;
    int v6only = 0;
    len = sizeof v6only;
    if (real.getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0 && v6only) {
        SHIM_DEBUG("listen fd %d: IPv6-only socket not announced (signal connections come over IPv4)", fd);
        return 0;
    }
    return ntohs(in6->sin6_port);
}

SHIM_EXPORT int listen(int fd, int backlog) {
    int rc = real.listen(fd, backlog);
    if (rc < 0 || !shim_enabled()) return rc;
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_adopt_tcp_locked(fd);
    uint16_t port = 0;
    if (sock && sock->state == SHIM_TCP) {  // (a second listen() only changes the backlog)
        port = mesh_listen_port(fd);
        if (port) {
            sock->state = SHIM_LISTENING;
            sock->listen_owner = getpid();
            shim_sock_ref(sock);  // held across the request
        } else {
            shim_fd_forget_locked(fd);  // a local-only server: nothing for the shim to do
        }
    }
    pthread_mutex_unlock(&shim_lock);
    if (!port) return rc;

    Boxermesh__V1__ShimListen body = BOXERMESH__V1__SHIM_LISTEN__INIT;
    body.port = port;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_LISTEN;
    request.listen = &body;
    Boxermesh__V1__ShimResponse *response;
    int ignored;
    int error = shim_node_call(&request, SHIM_REQUEST_TIMEOUT_MS, &response, &ignored);
    if (!error) error = response->error;
    // The listen itself succeeded either way: local clients still reach the app.
    SHIM_DEBUG("listen fd %d port %u: %s", fd, port, error ? strerror(error) : "announced");
    pthread_mutex_lock(&shim_lock);
    if (!error) sock->listen_port = port;  // from now on closing it withdraws the port
    shim_sock_unref_locked(sock);
    pthread_mutex_unlock(&shim_lock);
    shim_response_free(response);
    return rc;
}

// Trades an accepted signal connection for the mesh connection it announces. Returns the real fd (with the
// accept4 flags applied and *peer set to the mesh peer) or -1 when the node no longer has it.
static int take_accepted(int listen_fd, int signal_fd, uint16_t signal_port, int flags, int family,
                         struct sockaddr_storage *peer, socklen_t *peer_len) {
    struct sockaddr_storage local;
    socklen_t local_len = sizeof local;
    uint32_t local_ip;
    uint16_t port = 0;
    if (real.getsockname(signal_fd, (struct sockaddr *)&local, &local_len) == 0) {
        shim_sockaddr_ipv4((struct sockaddr *)&local, local_len, &local_ip, &port);
    }
    Boxermesh__V1__ShimTakeAccepted body = BOXERMESH__V1__SHIM_TAKE_ACCEPTED__INIT;
    body.port = port;
    body.signal_port = signal_port;
    body.takes_handoff = true;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_TAKE_ACCEPTED;
    request.take_accepted = &body;
    Boxermesh__V1__ShimResponse *response;
    int fd;
    int error = shim_node_call(&request, SHIM_REQUEST_TIMEOUT_MS, &response, &fd);
    if (!error) error = response->error;
    if (!error && response->body_case != BOXERMESH__V1__SHIM_RESPONSE__BODY_CONNECTION) error = EPROTO;
    real.close(signal_fd);
    if (error) {
        SHIM_DEBUG("accept fd %d: signal %u: the node has no connection for it: %s", listen_fd, signal_port,
                   strerror(error));
        shim_response_free(response);
        return -1;
    }
    // Received with FD_CLOEXEC set atomically; keep it only if the app asked for it.
    int status = real.fcntl(fd, F_GETFL, 0);
    if (status >= 0) real.fcntl(fd, F_SETFL, (status & ~O_NONBLOCK) | ((flags & SOCK_NONBLOCK) ? O_NONBLOCK : 0));
    if (!(flags & SOCK_CLOEXEC)) real.fcntl(fd, F_SETFD, 0);
    const Boxermesh__V1__ShimConnection *c = response->connection;
    pthread_mutex_lock(&shim_lock);
    // A kernel-accepted socket inherits the listener's options; the node's socket gets the ones the app set on it
    // (over the node's own, such as keepalive).
    struct shim_sock *listener = shim_fd_get_locked(listen_fd);
    if (listener) shim_replay_opts_locked(listener, fd);
    shim_fd_forget_locked(fd);
    struct shim_sock *sock = shim_sock_new(SHIM_MESH, family);
    if (sock) {
        shim_sock_set_connection(sock, c);
        // A relayed socket may be swapped for its direct socket later, which then needs the listener's options.
        if (listener && sock->handoff_connection) shim_copy_opts_locked(listener, sock);
        shim_fd_set_locked(fd, sock);
    }
    pthread_mutex_unlock(&shim_lock);
    *peer_len = shim_make_sockaddr(family, c->peer_address, (uint16_t)c->peer_port, peer);
    char ip[INET_ADDRSTRLEN];
    SHIM_DEBUG("accept fd %d: mesh connection from %s:%u (%s) as fd %d", listen_fd,
               shim_ip_string(c->peer_address, ip), c->peer_port, *c->path ? c->path : "?", fd);
    shim_response_free(response);
    return fd;
}

static int accept_common(int fd, struct sockaddr *addr, socklen_t *addr_len, int flags) {
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        int accepted = flags ? real.accept4(fd, (struct sockaddr *)&peer, &peer_len, flags)
                             : real.accept(fd, (struct sockaddr *)&peer, &peer_len);
        if (accepted < 0) return -1;
        uint32_t ip;
        uint16_t port;
        if (shim_sockaddr_ipv4((struct sockaddr *)&peer, peer_len, &ip, &port) && ip == SIGNAL_SOURCE) {
            if (shim_fd_tracked(accepted)) {
                pthread_mutex_lock(&shim_lock);
                shim_fd_forget_locked(accepted);
                pthread_mutex_unlock(&shim_lock);
            }
            int real_fd = take_accepted(fd, accepted, port, flags, peer.ss_family, &peer, &peer_len);
            if (real_fd >= 0) {
                shim_copy_sockaddr(&peer, peer_len, addr, addr_len);
                return real_fd;
            }
            int status = real.fcntl(fd, F_GETFL, 0);
            if (status >= 0 && (status & O_NONBLOCK)) {
                errno = EAGAIN;
                return -1;
            }
            continue;  // blocking: wait for the next connection
        }
        if (shim_fd_tracked(accepted)) {
            pthread_mutex_lock(&shim_lock);
            shim_fd_forget_locked(accepted);
            pthread_mutex_unlock(&shim_lock);
        }
        shim_copy_sockaddr(&peer, peer_len, addr, addr_len);
        return accepted;
    }
}

SHIM_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *addr_len) {
    if (!shim_enabled() || (addr && !addr_len)) return real.accept(fd, addr, addr_len);
    return accept_common(fd, addr, addr_len, 0);
}

SHIM_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *addr_len, int flags) {
    if (!shim_enabled() || (addr && !addr_len)) return real.accept4(fd, addr, addr_len, flags);
    return accept_common(fd, addr, addr_len, flags);
}

static int answer_address(struct sockaddr_storage *built, socklen_t built_len, struct sockaddr *addr,
                          socklen_t *len) {
    if (!addr || !len) {
        errno = EFAULT;
        return -1;
    }
    shim_copy_sockaddr(built, built_len, addr, len);
    return 0;
}

SHIM_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len) {
    if (!shim_enabled() || !shim_fd_tracked(fd)) return real.getpeername(fd, addr, len);
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_get_locked(fd);
    enum shim_state state = sock ? sock->state : SHIM_EPOLL;
    struct sockaddr_storage built;
    socklen_t built_len = 0;
    if (state == SHIM_MESH) built_len = shim_make_sockaddr(sock->family, sock->peer_ip, sock->peer_port, &built);
    pthread_mutex_unlock(&shim_lock);
    if (state == SHIM_MESH) return answer_address(&built, built_len, addr, len);
    if (state == SHIM_CONNECTING) {  // as for a TCP socket still connecting
        errno = ENOTCONN;
        return -1;
    }
    return real.getpeername(fd, addr, len);
}

SHIM_EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len) {
    if (!shim_enabled() || !shim_fd_tracked(fd)) return real.getsockname(fd, addr, len);
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_get_locked(fd);
    struct sockaddr_storage built;
    socklen_t built_len = 0;
    bool bound_mesh = false;
    if (sock && sock->state == SHIM_MESH) {
        built_len = shim_make_sockaddr(sock->family, sock->local_ip, sock->local_port, &built);
    } else if (sock && sock->state == SHIM_CONNECTING) {
        memset(&built, 0, sizeof built);  // "any", port 0: as a TCP socket before the kernel picks its port
        built.ss_family = (sa_family_t)sock->family;
        built_len = sock->family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    } else if (sock) {
        bound_mesh = sock->bound_mesh;
    }
    pthread_mutex_unlock(&shim_lock);
    if (built_len) return answer_address(&built, built_len, addr, len);
    if (!bound_mesh) return real.getsockname(fd, addr, len);
    // Bound to "any" for the app's bind to the mesh address: show the address it asked for.
    struct sockaddr_storage local;
    socklen_t local_len = sizeof local;
    if (real.getsockname(fd, (struct sockaddr *)&local, &local_len) < 0) return -1;
    uint16_t port = local.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&local)->sin6_port)
                                                : ntohs(((struct sockaddr_in *)&local)->sin_port);
    built_len = shim_make_sockaddr(local.ss_family, shim_cfg.mesh_ip, port, &built);
    return answer_address(&built, built_len, addr, len);
}
