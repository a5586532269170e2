// connect() to a mesh address: the node opens the connection and hands over a connected TCP socket, which the
// shim puts at the app's fd number (the swap). Blocking sockets wait for the node. Non-blocking ones get
// EINPROGRESS at once while a quiet placeholder holds the fd; the service thread swaps the real socket in when
// the node answers, which wakes the app's epoll_wait/poll/select as a kernel connect would. Socket options set
// before (or during) the connect are recorded and replayed on the real socket.
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Options that shape a connection, worth carrying over to the socket the node hands over. (Binding options
// such as SO_REUSEADDR, IPV6_V6ONLY or SO_BINDTODEVICE mean nothing for an established connection.)
static bool replayable(int level, int name) {
    switch (level) {
    case SOL_SOCKET:
        return name == SO_KEEPALIVE || name == SO_RCVBUF || name == SO_SNDBUF || name == SO_RCVBUFFORCE ||
               name == SO_SNDBUFFORCE || name == SO_LINGER || name == SO_RCVTIMEO || name == SO_SNDTIMEO ||
               name == SO_RCVLOWAT || name == SO_PRIORITY || name == SO_OOBINLINE || name == SO_MARK;
    case IPPROTO_TCP:
        return name == TCP_NODELAY || name == TCP_CORK || name == TCP_KEEPIDLE || name == TCP_KEEPINTVL ||
               name == TCP_KEEPCNT || name == TCP_USER_TIMEOUT || name == TCP_QUICKACK ||
               name == TCP_NOTSENT_LOWAT || name == TCP_CONGESTION || name == TCP_LINGER2;
    case IPPROTO_IP:
        return name == IP_TOS;
    case IPPROTO_IPV6:
        return name == IPV6_TCLASS;
    default:
        return false;
    }
}

static struct shim_opt *find_opt(struct shim_sock *sock, int level, int name) {
    for (size_t i = 0; i < sock->n_opts; i++) {
        if (sock->opts[i].level == level && sock->opts[i].name == name) return &sock->opts[i];
    }
    return NULL;
}

static void record_opt_locked(struct shim_sock *sock, int level, int name, const void *value, socklen_t len) {
    struct shim_opt *opt = find_opt(sock, level, name);
    if (!value || len > sizeof opt->value) {
        SHIM_DEBUG("socket option %d/%d (%u bytes) not recorded", level, name, (unsigned int)len);
        return;
    }
    if (!opt) {
        struct shim_opt *grown = realloc(sock->opts, (sock->n_opts + 1) * sizeof *grown);
        if (!grown) return;
        sock->opts = grown;
        opt = &sock->opts[sock->n_opts++];
        opt->level = level;
        opt->name = name;
    }
    opt->len = len;
    memcpy(opt->value, value, len);
}

void shim_replay_opts_locked(struct shim_sock *sock, int fd) {
    for (size_t i = 0; i < sock->n_opts; i++) {
        struct shim_opt *opt = &sock->opts[i];
        if (real.setsockopt(fd, opt->level, opt->name, opt->value, opt->len) < 0) {
            SHIM_DEBUG("replaying socket option %d/%d failed: %s", opt->level, opt->name, strerror(errno));
        }
    }
}

// `wake` is for a placeholder: a poll()/select() already sleeping on it would otherwise sleep on, since dup3 does
// not wake it.
int shim_swap_locked(struct shim_sock *sock, int fd, int replacement, bool wake) {
    int status = real.fcntl(fd, F_GETFL, 0), descriptor = real.fcntl(fd, F_GETFD, 0);
    int replacement_status = real.fcntl(replacement, F_GETFL, 0);
    if (status < 0 || descriptor < 0 || replacement_status < 0) {
        int error = errno;
        real.close(replacement);
        return error;
    }
    real.fcntl(replacement, F_SETFL, (replacement_status & ~O_NONBLOCK) | (status & O_NONBLOCK));
    shim_epoll_detach_locked(sock, fd);
    int old = wake ? real.fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    int rc = real.dup3(replacement, fd, (descriptor & FD_CLOEXEC) ? O_CLOEXEC : 0);
    int error = errno;
    real.close(replacement);
    shim_epoll_attach_locked(sock, fd);
    if (old >= 0) {
        if (rc >= 0) shutdown(old, SHUT_RDWR);
        real.close(old);
    }
    return rc < 0 ? error : 0;
}

// An AF_UNIX listener nobody knows: it reports no event at all (an unconnected TCP socket would report
// OUT|HUP, a socketpair end OUT) until it is shut down.
static int placeholder(void) {
    int fd = real.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    // Binding just the family makes the kernel pick a unique abstract name (autobind).
    if (real.bind(fd, (struct sockaddr *)&addr, sizeof(sa_family_t)) < 0 || real.listen(fd, 1) < 0) {
        int error = errno;
        real.close(fd);
        errno = error;
        return -1;
    }
    return fd;
}

void shim_copy_opts_locked(const struct shim_sock *from, struct shim_sock *to) {
    if (!from->n_opts) return;
    struct shim_opt *copy = malloc(from->n_opts * sizeof *copy);
    if (!copy) return;
    memcpy(copy, from->opts, from->n_opts * sizeof *copy);
    free(to->opts);
    to->opts = copy;
    to->n_opts = from->n_opts;
}

void shim_sock_set_connection(struct shim_sock *sock, const Boxermesh__V1__ShimConnection *connection) {
    sock->handoff_connection = connection->connection;
    sock->local_ip = connection->local_address ? connection->local_address : shim_cfg.mesh_ip;
    sock->local_port = (uint16_t)connection->local_port;
    sock->peer_ip = connection->peer_address;
    sock->peer_port = (uint16_t)connection->peer_port;
}

// The errno a reply stands for: transport failure, the node's error, or a reply without a connection.
static int connection_error(int transport, const Boxermesh__V1__ShimResponse *response) {
    if (transport) return transport;
    if (response->error) return response->error > 0 && response->error < 4096 ? response->error : EPROTO;
    return response->body_case == BOXERMESH__V1__SHIM_RESPONSE__BODY_CONNECTION ? 0 : EPROTO;
}

// Swaps in the connection. Unless the node may hand over a direct socket later (a relayed connection), no more
// swaps follow, so the epoll shadow and the recorded options can go.
static int become_mesh_locked(struct shim_sock *sock, int fd, int connected, bool wake,
                              const Boxermesh__V1__ShimConnection *connection) {
    shim_replay_opts_locked(sock, connected);
    int error = shim_swap_locked(sock, fd, connected, wake);
    if (error) return error;
    sock->state = SHIM_MESH;
    shim_sock_set_connection(sock, connection);
    if (!sock->handoff_connection) shim_sock_forget_swaps_locked(sock);
    return 0;
}

void shim_sock_forget_swaps_locked(struct shim_sock *sock) {
    sock->handoff_connection = 0;
    free(sock->regs);
    sock->regs = NULL;
    sock->n_regs = 0;
    free(sock->opts);
    sock->opts = NULL;
    sock->n_opts = 0;
}

static void log_result(int fd, uint32_t ip, uint16_t port, int error, const Boxermesh__V1__ShimResponse *response) {
    if (!shim_cfg.debug) return;
    char peer[INET_ADDRSTRLEN], local[INET_ADDRSTRLEN];
    shim_ip_string(ip, peer);
    if (error) {
        shim_log("connect fd %d to %s:%u failed: %s%s%s", fd, peer, port, strerror(error),
                 response && *response->message ? " - " : "", response ? response->message : "");
    } else {
        const Boxermesh__V1__ShimConnection *c = response->connection;
        shim_log("connect fd %d to %s:%u: connected (%s, from %s:%u)", fd, peer, port,
                 *c->path ? c->path : "?", shim_ip_string(c->local_address, local), c->local_port);
    }
}

void shim_connect_complete_locked(struct shim_waiter *w) {
    struct shim_sock *sock = w->sock;
    Boxermesh__V1__ShimResponse *response = w->response;
    int error = connection_error(w->error, response);
    if (!sock) {  // the app closed the fd meanwhile
        SHIM_DEBUG("connect fd %d: answer dropped, the fd was closed", w->app_fd);
        if (w->fd >= 0) real.close(w->fd);
        shim_response_free(response);
        return;
    }
    sock->pending = NULL;
    uint32_t ip = 0;
    uint16_t port = 0;
    if (!error) {
        ip = response->connection->peer_address;
        port = (uint16_t)response->connection->peer_port;
        shim_spare_trust_locked(ip, port, response->connection->listener_ms);
        error = become_mesh_locked(sock, w->app_fd, w->fd, true, response->connection);
    }
    if (error) {
        // Ready at once, like a failed kernel connect, with SO_ERROR (hooked) telling why. A fresh TCP socket
        // also lets the app connect again; failing that, the shut-down placeholder is ready too.
        int fresh = real.socket(sock->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fresh < 0 || shim_swap_locked(sock, w->app_fd, fresh, true) != 0) shutdown(w->app_fd, SHUT_RDWR);
        sock->state = SHIM_FAILED;
        sock->so_error = error;
    }
    log_result(w->app_fd, ip, port, error, response);
    shim_response_free(response);
}

// What a second connect() on the socket gets, as from the kernel; 0 lets the connect go ahead.
static int connect_state_error_locked(struct shim_sock *sock) {
    switch (sock->state) {
    case SHIM_CONNECTING:
    case SHIM_BLOCKING:
        return EALREADY;
    case SHIM_MESH:
        return EISCONN;
    case SHIM_FAILED: {
        int error = sock->so_error;  // not yet read with SO_ERROR: this connect reports it
        sock->so_error = 0;
        sock->state = SHIM_TCP;
        return error;
    }
    default:
        return 0;
    }
}

static int connect_nonblocking_locked(struct shim_sock *sock, int fd, Boxermesh__V1__ShimRequest *request) {
    int stand_in = placeholder();
    if (stand_in < 0) return errno;
    // Sent before the swap, under the lock: the reply cannot be handled before the placeholder is in place.
    int error = shim_node_send_async_locked(request, sock, fd);
    if (error) {
        real.close(stand_in);
        return error;
    }
    error = shim_swap_locked(sock, fd, stand_in, false);
    if (error) {
        sock->pending->sock = NULL;
        sock->pending = NULL;
        return error;
    }
    sock->state = SHIM_CONNECTING;
    return 0;
}

static int connect_blocking(struct shim_sock *sock, int fd, uint32_t ip, uint16_t port,
                            Boxermesh__V1__ShimRequest *request) {
    Boxermesh__V1__ShimResponse *response;
    int connected;
    int error = shim_node_call(request, SHIM_CONNECT_TIMEOUT_MS, &response, &connected);
    error = connection_error(error, response);
    pthread_mutex_lock(&shim_lock);
    if (shim_fd_get_locked(fd) != sock || sock->state != SHIM_BLOCKING) {
        if (!error) error = EBADF;  // closed (or replaced) by another thread meanwhile
        if (connected >= 0) real.close(connected);
    } else if (error) {
        sock->state = SHIM_TCP;
    } else {
        shim_spare_trust_locked(ip, port, response->connection->listener_ms);
        error = become_mesh_locked(sock, fd, connected, false, response->connection);
        if (error) sock->state = SHIM_TCP;
    }
    shim_sock_unref_locked(sock);
    pthread_mutex_unlock(&shim_lock);
    log_result(fd, ip, port, error, response);
    shim_response_free(response);
    if (error) {
        errno = error;
        return -1;
    }
    return 0;
}

// The connect took a lent spare link (already claimed): it becomes the app's socket, as a kernel connect's would.
static int connect_by_spare_locked(struct shim_sock *sock, int fd, int spare, uint64_t id, int64_t started_us,
                                   bool nonblocking, const Boxermesh__V1__ShimConnection *connection) {
    int error = become_mesh_locked(sock, fd, spare, false, connection);
    // Told only now: the node's thread, woken by it, must not hold up the swap.
    shim_spare_claimed_locked(id, connection->peer_port, shim_now_us() - started_us);
    pthread_mutex_unlock(&shim_lock);
    char peer[INET_ADDRSTRLEN];
    SHIM_DEBUG("connect fd %d to %s:%u: %s", fd, shim_ip_string(connection->peer_address, peer),
               connection->peer_port, error ? strerror(error) : "connected (direct, a lent spare link)");
    // Non-blocking, the kernel says EINPROGRESS even on loopback; the socket is writable at once.
    if (error || nonblocking) {
        errno = error ? error : EINPROGRESS;
        return -1;
    }
    return 0;
}

static int connect_mesh(int fd, const struct sockaddr *addr, socklen_t len, uint32_t ip, uint16_t port) {
    int64_t started_us = shim_now_us();
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_get_locked(fd);
    if (!sock) {
        // Unknown fd: take it on if it is a TCP socket that is not connected yet.
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        if (real.getpeername(fd, (struct sockaddr *)&peer, &peer_len) < 0 && errno == ENOTCONN) {
            sock = shim_fd_adopt_tcp_locked(fd);
        }
    }
    if (!sock || sock->state == SHIM_LISTENING || sock->state == SHIM_EPOLL) {
        pthread_mutex_unlock(&shim_lock);
        return real.connect(fd, addr, len);  // not a TCP client socket: the kernel decides
    }
    int error = connect_state_error_locked(sock);
    if (error) {
        pthread_mutex_unlock(&shim_lock);
        errno = error;
        return -1;
    }
    int status = real.fcntl(fd, F_GETFL, 0);
    bool nonblocking = status >= 0 && (status & O_NONBLOCK);
    Boxermesh__V1__ShimConnection lent = BOXERMESH__V1__SHIM_CONNECTION__INIT;
    uint64_t spare_id = 0;
    int spare = shim_spare_claim_locked(ip, port, &spare_id, &lent);
    if (spare >= 0) return connect_by_spare_locked(sock, fd, spare, spare_id, started_us, nonblocking, &lent);
    Boxermesh__V1__ShimConnect body = BOXERMESH__V1__SHIM_CONNECT__INIT;
    body.address = ip;
    body.port = port;
    body.takes_handoff = true;
    body.takes_spares = true;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_CONNECT;
    request.connect = &body;
    if (nonblocking) {
        error = connect_nonblocking_locked(sock, fd, &request);
        pthread_mutex_unlock(&shim_lock);
        char peer[INET_ADDRSTRLEN];
        SHIM_DEBUG("connect fd %d to %s:%u (non-blocking): %s", fd, shim_ip_string(ip, peer), port,
                   error ? strerror(error) : "asked the node");
        errno = error ? error : EINPROGRESS;
        return -1;
    }
    sock->state = SHIM_BLOCKING;
    shim_sock_ref(sock);  // held while waiting without the lock
    pthread_mutex_unlock(&shim_lock);
    return connect_blocking(sock, fd, ip, port, &request);
}

// A connect outside the mesh: the socket leaves the shim's care once the kernel takes the connect on.
static int connect_outside(int fd, const struct sockaddr *addr, socklen_t len) {
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_get_locked(fd);
    int error = sock ? connect_state_error_locked(sock) : 0;
    pthread_mutex_unlock(&shim_lock);
    if (error) {
        errno = error;
        return -1;
    }
    int rc = real.connect(fd, addr, len);
    int saved = errno;
    if (rc == 0 || saved == EINPROGRESS) {
        pthread_mutex_lock(&shim_lock);
        sock = shim_fd_get_locked(fd);
        if (sock && sock->state == SHIM_TCP) shim_fd_forget_locked(fd);
        pthread_mutex_unlock(&shim_lock);
    }
    errno = saved;
    return rc;
}

SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    uint32_t ip;
    uint16_t port;
    if (!shim_enabled()) return real.connect(fd, addr, len);
    if (shim_mesh_sockaddr(addr, len, &ip, &port)) return connect_mesh(fd, addr, len, ip, port);
    if (!shim_fd_tracked(fd)) return real.connect(fd, addr, len);
    return connect_outside(fd, addr, len);
}

SHIM_EXPORT int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
    if (!shim_enabled() || !shim_fd_tracked(fd) || !replayable(level, name)) {
        return real.setsockopt(fd, level, name, value, len);
    }
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_get_locked(fd);
    if (sock && sock->state == SHIM_CONNECTING) {
        // The placeholder is no TCP socket: keep the option for the swap.
        record_opt_locked(sock, level, name, value, len);
        pthread_mutex_unlock(&shim_lock);
        return 0;
    }
    int rc = real.setsockopt(fd, level, name, value, len);
    int saved = errno;
    // A listener's options are kept for the mesh sockets accepted on it, which the kernel did not clone from it.
    if (rc == 0 && sock && (sock->state == SHIM_LISTENING || shim_sock_swappable(sock))) {
        record_opt_locked(sock, level, name, value, len);
    }
    pthread_mutex_unlock(&shim_lock);
    errno = saved;
    return rc;
}

SHIM_EXPORT int getsockopt(int fd, int level, int name, void *value, socklen_t *len) {
    if (!shim_enabled() || !shim_fd_tracked(fd) || !value || !len) {
        return real.getsockopt(fd, level, name, value, len);
    }
    pthread_mutex_lock(&shim_lock);
    struct shim_sock *sock = shim_fd_get_locked(fd);
    const void *answer = NULL;
    socklen_t answer_len = sizeof(int);
    int number = 0;
    if (sock && level == SOL_SOCKET && name == SO_ERROR && sock->state == SHIM_FAILED && sock->so_error) {
        number = sock->so_error;  // reported once, as by the kernel
        sock->so_error = 0;
        answer = &number;
    } else if (sock && level == SOL_SOCKET && name == SO_DOMAIN &&
               (sock->state == SHIM_CONNECTING || sock->state == SHIM_MESH)) {
        number = sock->family;  // the node's socket may be AF_INET under an AF_INET6 app socket
        answer = &number;
    } else if (sock && sock->state == SHIM_CONNECTING) {
        // The placeholder answers as a TCP socket would, as far as the app told us.
        struct shim_opt *opt = find_opt(sock, level, name);
        if (opt) {
            answer = opt->value;
            answer_len = opt->len;
        } else if (level == SOL_SOCKET && (name == SO_PROTOCOL || name == SO_ACCEPTCONN)) {
            number = name == SO_PROTOCOL ? IPPROTO_TCP : 0;  // the placeholder is an AF_UNIX listener
            answer = &number;
        }
    }
    if (answer) {
        socklen_t n = *len < answer_len ? *len : answer_len;
        memcpy(value, answer, n);
        *len = n;
    }
    pthread_mutex_unlock(&shim_lock);
    return answer ? 0 : real.getsockopt(fd, level, name, value, len);
}
