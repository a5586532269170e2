// Per-fd state. Each tracked fd number points to a shim_sock shared by its dups; close/dup/dup2/dup3/
// fcntl(F_DUPFD*)/close_range/closefrom keep the table in step with the kernel's.
//
// The table has two levels of atomically published pointers so that the common case, an fd the shim knows
// nothing about, is answered without the lock (close() stays cheap and safe in signal handlers). Entries
// themselves are only read or changed under shim_lock.
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_BITS 10
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define CHUNKS 1024u  // fds below 2^20 are tracked; higher ones always pass through
#define TABLE_SIZE (CHUNKS * CHUNK_SIZE)

static struct shim_sock **chunks[CHUNKS];

static struct shim_sock **slot(int fd, bool create) {
    if (fd < 0 || (unsigned int)fd >= TABLE_SIZE) return NULL;
    struct shim_sock **chunk = __atomic_load_n(&chunks[fd >> CHUNK_BITS], __ATOMIC_ACQUIRE);
    if (!chunk && create) {
        chunk = calloc(CHUNK_SIZE, sizeof *chunk);
        if (!chunk) return NULL;
        __atomic_store_n(&chunks[fd >> CHUNK_BITS], chunk, __ATOMIC_RELEASE);
    }
    return chunk ? &chunk[fd & (CHUNK_SIZE - 1)] : NULL;
}

bool shim_fd_tracked(int fd) {
    struct shim_sock **entry = slot(fd, false);
    return entry && __atomic_load_n(entry, __ATOMIC_RELAXED) != NULL && !shim_in_vfork_child();
}

struct shim_sock *shim_fd_get_locked(int fd) {
    struct shim_sock **entry = slot(fd, false);
    return entry ? *entry : NULL;
}

struct shim_sock *shim_sock_new(enum shim_state state, int family) {
    struct shim_sock *sock = calloc(1, sizeof *sock);
    if (sock) {
        sock->state = state;
        sock->family = family;
    }
    return sock;
}

void shim_sock_ref(struct shim_sock *sock) {
    sock->refs++;
}

void shim_sock_unref_locked(struct shim_sock *sock) {
    if (--sock->refs > 0) return;
    if (sock->pending) sock->pending->sock = NULL;  // its reply will be dropped
    free(sock->opts);
    free(sock->regs);
    free(sock);
}

void shim_fd_set_locked(int fd, struct shim_sock *sock) {
    struct shim_sock **entry = slot(fd, true);
    shim_sock_ref(sock);
    if (!entry) {
        SHIM_DEBUG("fd %d cannot be tracked (out of memory or beyond the table)", fd);
        shim_sock_unref_locked(sock);  // frees a new sock that nobody else holds
        return;
    }
    __atomic_store_n(entry, sock, __ATOMIC_RELAXED);
}

uint16_t shim_fd_forget_locked(int fd) {
    struct shim_sock **entry = slot(fd, false);
    struct shim_sock *sock = entry ? *entry : NULL;
    if (!sock) return 0;
    __atomic_store_n(entry, NULL, __ATOMIC_RELAXED);
    shim_epoll_forget_fd_locked(sock, fd);
    if (sock->state == SHIM_EPOLL) shim_epoll_forget_epfd_locked(fd);
    if (sock->pending && sock->pending->app_fd == fd) {  // nowhere left to put the connection
        sock->pending->sock = NULL;
        sock->pending = NULL;
    }
    uint16_t port = 0;
    if (sock->state == SHIM_LISTENING && sock->refs == 1 && sock->listen_port && sock->listen_owner == getpid()) {
        port = sock->listen_port;
    }
    shim_sock_unref_locked(sock);
    return port;
}

void shim_fd_each_locked(unsigned int first, unsigned int last, void (*f)(int fd, struct shim_sock *, void *),
                         void *context) {
    if (first >= TABLE_SIZE) return;
    if (last >= TABLE_SIZE) last = TABLE_SIZE - 1;
    for (unsigned int fd = first; fd <= last; fd++) {
        struct shim_sock **chunk = chunks[fd >> CHUNK_BITS];
        if (!chunk) {
            fd |= CHUNK_SIZE - 1;  // skip the whole missing chunk
            continue;
        }
        struct shim_sock *sock = chunk[fd & (CHUNK_SIZE - 1)];
        if (sock) f((int)fd, sock, context);
    }
}

struct shim_sock *shim_fd_adopt_tcp_locked(int fd) {
    struct shim_sock *sock = shim_fd_get_locked(fd);
    if (sock) return sock;
    // Sockets the shim did not see created (inherited across exec, or before it was active).
    int domain, type, protocol;
    socklen_t len = sizeof domain;
    if (real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return NULL;
    len = sizeof type;
    if (real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return NULL;
    len = sizeof protocol;
    if (real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) < 0) return NULL;
    if ((domain != AF_INET && domain != AF_INET6) || type != SOCK_STREAM || protocol != IPPROTO_TCP) return NULL;
    sock = shim_sock_new(SHIM_TCP, domain);
    if (sock) shim_fd_set_locked(fd, sock);
    return shim_fd_get_locked(fd);
}

void shim_send_unlisten(uint16_t port) {
    int saved = errno;
    Boxermesh__V1__ShimUnlisten body = BOXERMESH__V1__SHIM_UNLISTEN__INIT;
    body.port = port;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_UNLISTEN;
    request.unlisten = &body;
    Boxermesh__V1__ShimResponse *response;
    int fd;
    int error = shim_node_call(&request, SHIM_REQUEST_TIMEOUT_MS, &response, &fd);
    if (!error) error = response->error;
    SHIM_DEBUG("unlisten port %u: %s", port, error ? strerror(error) : "ok");
    shim_response_free(response);
    errno = saved;
}

// ---- hooks ---------------------------------------------------------------------------------------------------

// A new fd from dup: it refers to the same socket as `from`.
static void copy_entry_locked(int from, int to) {
    shim_fd_forget_locked(to);  // a stale entry (the number was closed where the shim could not see it)
    struct shim_sock *sock = shim_fd_get_locked(from);
    if (sock) shim_fd_set_locked(to, sock);
}

SHIM_EXPORT int close(int fd) {
    if (!shim_enabled() || !(shim_fd_tracked(fd) || shim_node_is_fd(fd) || shim_spare_is_fd(fd))) return real.close(fd);
    pthread_mutex_lock(&shim_lock);
    shim_node_vacate_locked((unsigned int)fd, (unsigned int)fd);
    uint16_t port = shim_fd_forget_locked(fd);
    int rc = real.close(fd);
    int saved = errno;
    pthread_mutex_unlock(&shim_lock);
    if (port) shim_send_unlisten(port);
    errno = saved;
    return rc;
}

struct ports {
    uint16_t *list;
    size_t count;
};

static void forget_into(int fd, struct shim_sock *sock, void *context) {
    (void)sock;
    struct ports *ports = context;
    uint16_t port = shim_fd_forget_locked(fd);
    if (!port) return;
    uint16_t *grown = realloc(ports->list, (ports->count + 1) * sizeof *grown);
    if (!grown) return;
    ports->list = grown;
    ports->list[ports->count++] = port;
}

static void unlisten_all(struct ports *ports) {
    for (size_t i = 0; i < ports->count; i++) shim_send_unlisten(ports->list[i]);
    free(ports->list);
}

SHIM_EXPORT int close_range(unsigned int first, unsigned int last, int flags) {
    if (!real.close_range) {
        errno = ENOSYS;
        return -1;
    }
    if (!shim_enabled() || (flags & CLOSE_RANGE_CLOEXEC) || shim_in_vfork_child()) {
        return real.close_range(first, last, flags);
    }
    struct ports ports = {0};
    pthread_mutex_lock(&shim_lock);
    shim_node_vacate_locked(first, last);
    shim_fd_each_locked(first, last, forget_into, &ports);
    int rc = real.close_range(first, last, flags);
    int saved = errno;
    pthread_mutex_unlock(&shim_lock);
    unlisten_all(&ports);
    errno = saved;
    return rc;
}

SHIM_EXPORT void closefrom(int first) {
    if (!real.closefrom) return;
    if (!shim_enabled() || first < 0 || shim_in_vfork_child()) {
        real.closefrom(first);
        return;
    }
    struct ports ports = {0};
    pthread_mutex_lock(&shim_lock);
    shim_node_vacate_locked((unsigned int)first, ~0u);
    shim_fd_each_locked((unsigned int)first, ~0u, forget_into, &ports);
    real.closefrom(first);
    pthread_mutex_unlock(&shim_lock);
    unlisten_all(&ports);
}

SHIM_EXPORT int dup(int fd) {
    if (!shim_enabled() || !shim_fd_tracked(fd)) return real.dup(fd);
    pthread_mutex_lock(&shim_lock);
    int rc = real.dup(fd);
    int saved = errno;
    if (rc >= 0) copy_entry_locked(fd, rc);
    pthread_mutex_unlock(&shim_lock);
    errno = saved;
    return rc;
}

static int dup_onto(int from, int to, int flags, bool three) {
    if (!shim_enabled() || !(shim_fd_tracked(from) || shim_fd_tracked(to) || shim_node_is_fd(to) || shim_spare_is_fd(to))) {
        return three ? real.dup3(from, to, flags) : real.dup2(from, to);
    }
    pthread_mutex_lock(&shim_lock);
    if (from != to) shim_node_vacate_locked((unsigned int)to, (unsigned int)to);
    int rc = three ? real.dup3(from, to, flags) : real.dup2(from, to);
    int saved = errno;
    uint16_t port = 0;
    if (rc >= 0 && from != to) {
        port = shim_fd_forget_locked(to);
        copy_entry_locked(from, to);
    }
    pthread_mutex_unlock(&shim_lock);
    if (port) shim_send_unlisten(port);
    errno = saved;
    return rc;
}

SHIM_EXPORT int dup2(int from, int to) {
    return dup_onto(from, to, 0, false);
}

SHIM_EXPORT int dup3(int from, int to, int flags) {
    return dup_onto(from, to, flags, true);
}

// fcntl is variadic; like glibc, pass the optional argument on as a pointer-sized value.
static int fcntl_common(int (*next)(int, int, ...), int fd, int cmd, void *arg) {
    if ((cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC) || !shim_enabled() || !shim_fd_tracked(fd)) {
        return next(fd, cmd, arg);
    }
    pthread_mutex_lock(&shim_lock);
    int rc = next(fd, cmd, arg);
    int saved = errno;
    if (rc >= 0) copy_entry_locked(fd, rc);
    pthread_mutex_unlock(&shim_lock);
    errno = saved;
    return rc;
}

SHIM_EXPORT int fcntl(int fd, int cmd, ...) {
    va_list args;
    va_start(args, cmd);
    void *arg = va_arg(args, void *);
    va_end(args);
    shim_enabled();  // real.fcntl may be needed before the constructor ran
    return fcntl_common(real.fcntl, fd, cmd, arg);
}

// What callers built with _FILE_OFFSET_BITS=64 link to.
SHIM_EXPORT int fcntl64(int fd, int cmd, ...) {
    va_list args;
    va_start(args, cmd);
    void *arg = va_arg(args, void *);
    va_end(args);
    shim_enabled();
    return fcntl_common(real.fcntl64, fd, cmd, arg);
}
