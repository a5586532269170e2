// Shadow of the app's epoll registrations for sockets that may still be swapped. dup2/dup3 over an fd drops its
// registrations in the kernel (nginx registers an upstream socket before connect()), so the shim removes them
// before each swap and adds them back afterwards; adding a ready socket also wakes a sleeping epoll_wait.
#include "shim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool shim_sock_swappable(const struct shim_sock *sock) {
    switch (sock->state) {
    case SHIM_TCP:
    case SHIM_CONNECTING:
    case SHIM_BLOCKING:
    case SHIM_FAILED:
        return true;
    case SHIM_MESH:
        return sock->handoff_connection != 0;
    default:
        return false;
    }
}

static struct shim_epreg *find(struct shim_sock *sock, int epfd, int fd) {
    for (size_t i = 0; i < sock->n_regs; i++) {
        if (sock->regs[i].epfd == epfd && sock->regs[i].fd == fd) return &sock->regs[i];
    }
    return NULL;
}

static void remove_at(struct shim_sock *sock, size_t i) {
    sock->regs[i] = sock->regs[--sock->n_regs];
}

static void record_locked(struct shim_sock *sock, int epfd, int op, int fd, const struct epoll_event *event) {
    struct shim_epreg *reg = find(sock, epfd, fd);
    if (op == EPOLL_CTL_DEL) {
        if (reg) remove_at(sock, (size_t)(reg - sock->regs));
        return;
    }
    if (!event) return;
    if (!reg) {
        struct shim_epreg *grown = realloc(sock->regs, (sock->n_regs + 1) * sizeof *grown);
        if (!grown) {
            SHIM_DEBUG("epoll registration of fd %d not shadowed (out of memory)", fd);
            return;
        }
        sock->regs = grown;
        reg = &sock->regs[sock->n_regs++];
        reg->epfd = epfd;
        reg->fd = fd;
    }
    reg->event = *event;
    // Mark the epoll fd so that closing it (a tracked fd) drops these registrations.
    if (!shim_fd_get_locked(epfd)) {
        struct shim_sock *marker = shim_sock_new(SHIM_EPOLL, AF_UNSPEC);
        if (marker) shim_fd_set_locked(epfd, marker);
    }
}

void shim_epoll_detach_locked(struct shim_sock *sock, int fd) {
    for (size_t i = 0; i < sock->n_regs; i++) {
        if (sock->regs[i].fd == fd) real.epoll_ctl(sock->regs[i].epfd, EPOLL_CTL_DEL, fd, NULL);
    }
}

void shim_epoll_attach_locked(struct shim_sock *sock, int fd) {
    for (size_t i = 0; i < sock->n_regs; i++) {
        struct shim_epreg *reg = &sock->regs[i];
        if (reg->fd != fd) continue;
        struct epoll_event event = reg->event;
        if (real.epoll_ctl(reg->epfd, EPOLL_CTL_ADD, fd, &event) < 0) {
            SHIM_DEBUG("re-adding fd %d to epoll fd %d failed: %s", fd, reg->epfd, strerror(errno));
        }
    }
}

void shim_epoll_forget_fd_locked(struct shim_sock *sock, int fd) {
    for (size_t i = sock->n_regs; i-- > 0;) {
        if (sock->regs[i].fd == fd) remove_at(sock, i);
    }
}

static void forget_epfd_in(int fd, struct shim_sock *sock, void *context) {
    (void)fd;
    int epfd = *(int *)context;
    for (size_t i = sock->n_regs; i-- > 0;) {
        if (sock->regs[i].epfd == epfd) remove_at(sock, i);
    }
}

void shim_epoll_forget_epfd_locked(int epfd) {
    shim_fd_each_locked(0, ~0u, forget_epfd_in, &epfd);
}

SHIM_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
    if (!shim_enabled() || !shim_fd_tracked(fd)) return real.epoll_ctl(epfd, op, fd, event);
    pthread_mutex_lock(&shim_lock);
    int rc = real.epoll_ctl(epfd, op, fd, event);
    int saved = errno;
    struct shim_sock *sock = shim_fd_get_locked(fd);
    if (rc == 0 && sock && shim_sock_swappable(sock)) record_locked(sock, epfd, op, fd, event);
    pthread_mutex_unlock(&shim_lock);
    errno = saved;
    return rc;
}
