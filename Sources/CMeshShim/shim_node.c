// The connection to the node: one AF_UNIX SOCK_SEQPACKET connection per process, opened on first need (or at a
// lookup of a mesh name, shim_node_warm), one protobuf message per datagram. Any thread sends; a service thread,
// started with the first request on each connection, is the only reader: it matches replies to waiters by id,
// completes non-blocking connects, and times out waiters whose node stopped answering. All of this state is
// guarded by shim_lock.
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int node_fd = -1;           // also read without the lock by shim_node_is_fd (close() fast path)
static dev_t node_dev;             // identity of our socket: notices an fd closed behind our back and reused
static ino_t node_ino;
static uint64_t generation;        // bumped whenever the connection is given up; its service thread then exits
static uint64_t serving;           // the generation whose service thread runs
static uint64_t next_id = 1;
static struct shim_waiter *waiters;
static pthread_cond_t replied = PTHREAD_COND_INITIALIZER;

int64_t shim_now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int64_t shim_now_ms(void) {
    return shim_now_us() / 1000;
}

bool shim_node_is_fd(int fd) {
    return fd >= 0 && __atomic_load_n(&node_fd, __ATOMIC_RELAXED) == fd && !shim_in_vfork_child();
}

static void set_node_fd(int fd) {
    __atomic_store_n(&node_fd, fd, __ATOMIC_RELAXED);
}

bool shim_fd_is(int fd, dev_t dev, ino_t ino) {
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

static bool node_fd_is_ours_locked(void) {
    return node_fd >= 0 && shim_fd_is(node_fd, node_dev, node_ino);
}

void shim_response_free(Boxermesh__V1__ShimResponse *response) {
    if (response) boxermesh__v1__shim_response__free_unpacked(response, NULL);
}

// Hands a reply (or a failure) to its waiter. The waiter is no longer in the list.
static void finish_waiter_locked(struct shim_waiter *w, int error, Boxermesh__V1__ShimResponse *response, int fd) {
    w->done = true;
    w->error = error;
    w->response = response;
    w->fd = fd;
    if (w->app_fd >= 0) {
        shim_connect_complete_locked(w);
        free(w);
    } else {
        pthread_cond_broadcast(&replied);
    }
}

static void fail_all_waiters_locked(int error) {
    struct shim_waiter *w = waiters;
    waiters = NULL;
    while (w) {
        struct shim_waiter *next = w->next;
        finish_waiter_locked(w, error, NULL, -1);
        w = next;
    }
}

// Gives the connection up: its waiters fail with `error`, the next request connects again.
static void drop_connection_locked(int error, bool close_it) {
    if (close_it && node_fd_is_ours_locked()) {
        shutdown(node_fd, SHUT_RDWR);  // also wakes the service thread's poll()
        real.close(node_fd);
    }
    set_node_fd(-1);
    generation++;
    fail_all_waiters_locked(error);
    shim_spare_drop_all_locked();  // the node ends its loans to this connection
}

// A message the node sends unasked (id 0), with the fds it carries: handled here (true), or not one (false).
static bool unasked_locked(const Boxermesh__V1__ShimResponse *response, const int fds[2], size_t n_fds) {
    if (response->id != 0) return false;
    switch (response->body_case) {
    case BOXERMESH__V1__SHIM_RESPONSE__BODY_SPARE:
        if (n_fds != 1) return false;
        shim_spare_add_locked(response->spare, fds[0]);
        return true;
    case BOXERMESH__V1__SHIM_RESPONSE__BODY_RECALL:
        if (n_fds != 0) return false;
        shim_spare_recall_locked(response->recall->spare);
        return true;
    case BOXERMESH__V1__SHIM_RESPONSE__BODY_HANDOFF:
        if (n_fds != 2) return false;
        shim_handoff_locked(response->handoff, fds[0], fds[1]);
        return true;
    default:
        return false;
    }
}

// Waits for replies; exits when its connection is given up. Runs with all signals blocked (the app's handlers
// belong on the app's threads) and never calls a hooked function.
static void *service_main(void *arg) {
    uint64_t mine = (uint64_t)(uintptr_t)arg;
    // Replies are read under the lock only, so one buffer serves every service thread of the process.
    static uint8_t buffer[65536];
    pthread_setname_np(pthread_self(), "boxer-shim");
    pthread_mutex_lock(&shim_lock);
    while (mine == generation) {
        // Time out waiters, and learn how long until the next deadline.
        int64_t now = shim_now_ms(), nearest = -1;
        struct shim_waiter **link = &waiters;
        while (*link) {
            struct shim_waiter *w = *link;
            if (w->deadline_ms <= now) {
                *link = w->next;
                SHIM_DEBUG("request %llu: the node did not answer in time", (unsigned long long)w->id);
                finish_waiter_locked(w, ETIMEDOUT, NULL, -1);
                continue;
            }
            if (nearest < 0 || w->deadline_ms < nearest) nearest = w->deadline_ms;
            link = &w->next;
        }
        // Capped while someone waits: if the app closed our fd behind our back the poll may be on a stranger.
        int timeout = nearest < 0 ? -1 : (int)(nearest - now < 1000 ? nearest - now : 1000);
        struct pollfd p = {.fd = node_fd, .events = POLLIN};
        pthread_mutex_unlock(&shim_lock);
        int ready = poll(&p, 1, timeout);
        pthread_mutex_lock(&shim_lock);
        if (mine != generation || ready <= 0) continue;
        if (!node_fd_is_ours_locked()) {
            SHIM_DEBUG("node connection fd %d was closed behind the shim's back", node_fd);
            drop_connection_locked(ENETUNREACH, false);
            break;
        }
        char control[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {.iov_base = buffer, .iov_len = sizeof buffer};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
        ssize_t n = recvmsg(node_fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
            SHIM_DEBUG("the node closed the connection%s%s", n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
            drop_connection_locked(ENETUNREACH, true);
            break;
        }
        int fds[2] = {-1, -1};
        size_t n_fds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int received;
                memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
                if (n_fds < 2) fds[n_fds++] = received;
                else real.close(received);  // the protocol attaches at most two
            }
        }
        Boxermesh__V1__ShimResponse *response =
            (msg.msg_flags & MSG_TRUNC) ? NULL : boxermesh__v1__shim_response__unpack(NULL, (size_t)n, buffer);
        if (response && unasked_locked(response, fds, n_fds)) {
            shim_response_free(response);
            continue;
        }
        if (n_fds == 2) {  // only a handoff carries two
            real.close(fds[1]);
            fds[1] = -1;
            if (response) response->error = EPROTO;
        }
        int fd = fds[0];
        if (!response) {
            SHIM_DEBUG("ignoring a malformed reply from the node (%zd bytes)", n);
            if (fd >= 0) real.close(fd);
            continue;
        }
        // A connection comes with exactly one fd; anything else must not carry one.
        bool connection = response->error == 0 &&
                          response->body_case == BOXERMESH__V1__SHIM_RESPONSE__BODY_CONNECTION;
        if (connection != (fd >= 0)) {
            SHIM_DEBUG("reply %llu: %s", (unsigned long long)response->id,
                       connection ? "connection without an fd" : "unexpected fd");
            if (fd >= 0) real.close(fd);
            fd = -1;
            if (connection) response->error = EPROTO;
        }
        struct shim_waiter **at = &waiters;
        while (*at && (*at)->id != response->id) at = &(*at)->next;
        if (!*at) {  // its waiter timed out
            SHIM_DEBUG("late reply %llu dropped", (unsigned long long)response->id);
            if (fd >= 0) real.close(fd);
            shim_response_free(response);
            continue;
        }
        struct shim_waiter *w = *at;
        *at = w->next;
        finish_waiter_locked(w, 0, response, fd);
    }
    pthread_mutex_unlock(&shim_lock);
    return NULL;
}

// Opens the connection (no thread yet): the node starts serving this process meanwhile.
static int open_node_locked(void) {
    if (node_fd >= 0) {
        if (node_fd_is_ours_locked()) return 0;
        SHIM_DEBUG("node connection fd %d was closed behind the shim's back; reconnecting", node_fd);
        drop_connection_locked(ENETUNREACH, false);
    }
    int fd = real.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        SHIM_DEBUG("no socket for the node connection: %s", strerror(errno));
        return ENETUNREACH;
    }
    if (real.connect(fd, (struct sockaddr *)&shim_cfg.node_addr, shim_cfg.node_addr_len) < 0) {
        SHIM_DEBUG("cannot reach the node: %s", strerror(errno));
        real.close(fd);
        return ENETUNREACH;
    }
    struct stat st;
    fstat(fd, &st);
    node_dev = st.st_dev;
    node_ino = st.st_ino;
    set_node_fd(fd);
    generation++;
    SHIM_DEBUG("connected to the node (fd %d)", fd);
    return 0;
}

// The connection, with its service thread (started with the first request on it).
static int connect_node_locked(void) {
    int error = open_node_locked();
    if (error || serving == generation) return error;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  // the thread inherits this mask
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, service_main, (void *)(uintptr_t)generation);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        SHIM_DEBUG("cannot start the service thread: %s", strerror(rc));
        drop_connection_locked(ENETUNREACH, true);
        return ENETUNREACH;
    }
    serving = generation;
    return 0;
}

void shim_node_warm(void) {
    if (__atomic_load_n(&node_fd, __ATOMIC_RELAXED) >= 0 || shim_in_vfork_child()) return;
    pthread_mutex_lock(&shim_lock);
    if (node_fd < 0) open_node_locked();
    pthread_mutex_unlock(&shim_lock);
}

// Sends `request` with a fresh id and links w as its waiter.
static int send_locked(Boxermesh__V1__ShimRequest *request, struct shim_waiter *w, int timeout_ms) {
    int error = connect_node_locked();
    if (error) return error;
    request->id = w->id = next_id++;
    uint8_t buffer[1024];
    size_t size = boxermesh__v1__shim_request__get_packed_size(request);
    if (size > sizeof buffer) return EINVAL;
    boxermesh__v1__shim_request__pack(request, buffer);
    if (send(node_fd, buffer, size, MSG_NOSIGNAL) < 0) {
        SHIM_DEBUG("cannot send to the node: %s", strerror(errno));
        drop_connection_locked(ENETUNREACH, true);
        return ENETUNREACH;
    }
    w->deadline_ms = shim_now_ms() + timeout_ms;
    w->next = waiters;
    waiters = w;
    return 0;
}

void shim_node_notify_locked(Boxermesh__V1__ShimRequest *request) {
    if (node_fd < 0) return;
    request->id = 0;
    uint8_t buffer[1024];
    size_t size = boxermesh__v1__shim_request__get_packed_size(request);
    if (size > sizeof buffer) return;
    boxermesh__v1__shim_request__pack(request, buffer);
    if (send(node_fd, buffer, size, MSG_NOSIGNAL) < 0) SHIM_DEBUG("cannot send to the node: %s", strerror(errno));
}

int shim_node_call(Boxermesh__V1__ShimRequest *request, int timeout_ms, Boxermesh__V1__ShimResponse **response,
                   int *fd) {
    struct shim_waiter w = {.fd = -1, .app_fd = -1};
    // The waiter lives on this stack: a cancelled thread would leave it dangling in the list.
    int cancel_state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    pthread_mutex_lock(&shim_lock);
    int error = send_locked(request, &w, timeout_ms);
    if (!error) {
        while (!w.done) pthread_cond_wait(&replied, &shim_lock);
        error = w.error;
    }
    pthread_mutex_unlock(&shim_lock);
    pthread_setcancelstate(cancel_state, NULL);
    *response = w.response;
    *fd = w.fd;
    return error;
}

int shim_node_send_async_locked(Boxermesh__V1__ShimRequest *request, struct shim_sock *sock, int app_fd) {
    struct shim_waiter *w = calloc(1, sizeof *w);
    if (!w) return ENOMEM;
    w->fd = -1;
    w->sock = sock;
    w->app_fd = app_fd;
    int error = send_locked(request, w, SHIM_CONNECT_TIMEOUT_MS);
    if (error) {
        free(w);
        return error;
    }
    sock->pending = w;
    return 0;
}

void shim_node_vacate_locked(unsigned int first, unsigned int last) {
    shim_spare_vacate_locked(first, last);  // first: the node hears of them on the connection
    if (node_fd < 0 || (unsigned int)node_fd < first || (unsigned int)node_fd > last) return;
    // Give the connection up rather than move it: the service thread polls the fd by number, and only a
    // shutdown reliably wakes it. The next request connects again.
    SHIM_DEBUG("the app closes fd %d, the node connection; reconnecting on next need", node_fd);
    shutdown(node_fd, SHUT_RDWR);
    drop_connection_locked(ENETUNREACH, false);  // the app's own close releases the fd
}

void shim_node_after_fork_child(void) {
    if (node_fd >= 0) real.close(node_fd);  // our copy of the parent's connection
    shim_spare_drop_all_locked();           // and of the spares lent to the parent
    set_node_fd(-1);
    generation++;
    // Waiters belong to the parent's threads; a non-blocking connect still in flight stays unfinished here.
    while (waiters) {
        struct shim_waiter *w = waiters;
        waiters = w->next;
        if (w->app_fd >= 0) {
            if (w->sock) w->sock->pending = NULL;
            free(w);
        }
    }
    pthread_cond_init(&replied, NULL);
}
