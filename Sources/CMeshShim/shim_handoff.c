// Taking over the direct socket of a relayed connection after its upgrade, so its bytes stop passing through the
// node. The node has stopped copying and sent both its direct socket and its end of the app's loopback socket
// (the "pair"). Two things must hold: every byte the app wrote to the loopback socket reaches the peer before any
// byte it writes to the direct socket, and no byte the app has not read yet is left behind in the loopback
// socket. So the app's other threads are parked for a moment (a signal whose handler waits): meanwhile the
// loopback socket, shut for writing, is emptied into the direct socket and the direct socket takes each of the
// app's fd numbers of the connection (epoll registrations, O_NONBLOCK, FD_CLOEXEC and options kept).
//
// A thread the signal interrupts in a blocking call on the socket that moved nothing yet restarts it (SA_RESTART)
// on the direct socket; one that moved some bytes returns them, as on any signal. epoll_wait, poll and sleeps in
// other threads return early with EINTR, which they must already handle; a blocked call on a socket with a
// send or receive timeout would fail with EINTR too, so the shim waits until no thread is in one. A thread that
// blocks the signal (a helper that blocks every signal) is left running only while it sleeps on a futex that
// nothing can wake before the window ends. Where this cannot be done safely (the app handles the signal itself,
// a thread that blocks it is not asleep so, a thread does not stop or keeps waiting on a socket with a timeout,
// the app leaves bytes unread, another process holds the socket too) the shim declines, and the node goes on
// copying.
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 16
#define MAX_THREADS 4096
// How long the app may take to read what it was sent, and its threads to stop.
#define SETTLE_MS 1000
#define PARK_MS 500
// Bytes the loopback socket may still hold when the threads are parked (moved while they wait).
#define SMALL_BUFFER (64 * 1024)
#define DRAIN_MS 5000

static int park_signal(void) { return SIGRTMAX - 2; }

// Parking: the handler waits while `parking` is set, until `park_generation` changes.
static uint32_t park_generation;
static int parking;
static int parked;

static void park_handler(int sig) {
    (void)sig;
    int saved = errno;
    uint32_t generation = __atomic_load_n(&park_generation, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&parking, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(&parked, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&park_generation, __ATOMIC_SEQ_CST) == generation) {
            syscall(SYS_futex, &park_generation, FUTEX_WAIT_PRIVATE, generation, NULL, NULL, 0);
        }
        __atomic_sub_fetch(&parked, 1, __ATOMIC_SEQ_CST);
    }
    errno = saved;
}

static void pause_us(long us) {
    struct timespec t = {.tv_sec = 0, .tv_nsec = us * 1000};
    nanosleep(&t, NULL);
}

// Calls `each` with the number of every numeric entry of the directory at `path` until it returns false; without
// malloc (a parked thread may hold malloc's lock). 1 when it went through the whole directory, 0 when `each`
// stopped it, -1 when it is unreadable.
static int each_number(const char *path, bool (*each)(int dir, long number, void *context), void *context) {
    int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    char buffer[4096];
    long got;
    bool going = true;
    while (going && (got = syscall(SYS_getdents64, dir, buffer, sizeof buffer)) > 0) {
        for (long offset = 0; going && offset < got;) {
            unsigned short reclen;
            memcpy(&reclen, buffer + offset + 16, sizeof reclen);  // struct linux_dirent64: ino, off, reclen, type, name
            const char *name = buffer + offset + 19;
            offset += reclen;
            if (*name >= '0' && *name <= '9') going = each(dir, strtol(name, NULL, 10), context);
        }
    }
    real.close(dir);
    return !going ? 0 : got == 0 ? 1 : -1;
}

struct threads {
    pid_t *tids;
    int max, n;
};

static bool add_thread(int dir, long tid, void *context) {
    (void)dir;
    struct threads *threads = context;
    if (threads->n >= threads->max) return false;
    threads->tids[threads->n++] = (pid_t)tid;
    return true;
}

// The process's thread ids. -1 when unreadable.
static int list_threads(pid_t *tids, int max) {
    struct threads threads = {.tids = tids, .max = max};
    return each_number("/proc/self/task", add_thread, &threads) == 1 ? threads.n : -1;
}

struct sharing {
    char target[40];  // "socket:[INODE]"
    pid_t self, process;
};

static bool holds_target(int dir, long fd, void *context) {
    struct sharing *sharing = context;
    char name[24], text[40];
    snprintf(name, sizeof name, "%ld", fd);
    ssize_t n = readlinkat(dir, name, text, sizeof text);
    return !(n == (ssize_t)strlen(sharing->target) && !memcmp(text, sharing->target, (size_t)n));
}

// Looks through one process's fds: stops (false) at the one that holds the target. A process whose fds we may
// not read (another user's) cannot have been given ours by fork or exec without changing users: passed over.
static bool process_lacks_target(int dir, long pid, void *context) {
    (void)dir;
    struct sharing *sharing = context;
    if (pid == sharing->self) return true;
    char path[40];
    snprintf(path, sizeof path, "/proc/%ld/fd", pid);
    if (each_number(path, holds_target, sharing) == 0) sharing->process = (pid_t)pid;
    return sharing->process == 0;
}

// Another process that holds the socket at `fd` too (a forked child, a program it ran, one it was passed to), or 0.
// The swap reaches only this process's fds, so that process would be left with the loopback socket the shim
// shuts. Without malloc.
static pid_t shared_with(int fd) {
    struct stat status;
    if (fstat(fd, &status) != 0) return 0;
    struct sharing sharing = {.self = getpid()};
    snprintf(sharing.target, sizeof sharing.target, "socket:[%lu]", (unsigned long)status.st_ino);
    each_number("/proc", process_lacks_target, &sharing);
    return sharing.process;
}

// Says which process shares the connection's socket.
static void say_shared(pid_t process, char *why, size_t size) {
    char path[40], name[32] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)process);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, name, sizeof name - 1) : -1;
    if (fd >= 0) real.close(fd);
    if (n > 0 && name[n - 1] == '\n') n--;
    name[n > 0 ? n : 0] = 0;
    snprintf(why, size, "the connection's socket is shared with process %d (%s), which the switch would leave behind",
             (int)process, name);
}

// Reads /proc/self/task/TID/NAME into `text` (NUL-terminated), without malloc. False when unreadable.
static bool read_task_file(pid_t tid, const char *name, char *text, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/%s", (int)tid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, text, size - 1);
    real.close(fd);
    if (n <= 0) return false;
    text[n] = 0;
    return true;
}

// Whether thread `tid` blocks `sig` (from /proc; false when unreadable).
static bool blocks_signal(pid_t tid, int sig) {
    char status[4096];
    if (!read_task_file(tid, "status", status, sizeof status)) return false;
    const char *line = strstr(status, "SigBlk:");
    if (!line) return false;
    unsigned long long mask = strtoull(line + 7, NULL, 16);
    return (mask >> (sig - 1)) & 1;
}

static void release_all(void) {
    __atomic_store_n(&parking, 0, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&park_generation, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &park_generation, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    // The next parking counts from zero.
    for (int64_t until = shim_now_ms() + 100; __atomic_load_n(&parked, __ATOMIC_SEQ_CST) > 0 && shim_now_ms() < until;) {
        pause_us(100);
    }
}

// Parks every thread but this one and those that block the signal (``sleeper_awake`` found them asleep past the
// window). 0, or the id of a thread that did not stop (the others are released).
static pid_t park_all(void) {
    static pid_t signaled[MAX_THREADS], tids[MAX_THREADS];
    int n_signaled = 0;
    pid_t self = (pid_t)syscall(SYS_gettid), pid = getpid();
    __atomic_store_n(&parking, 1, __ATOMIC_SEQ_CST);
    int64_t deadline = shim_now_ms() + PARK_MS;
    for (;;) {
        int n = list_threads(tids, MAX_THREADS);
        pid_t straggler = -1;
        int others = 0;
        for (int i = 0; i < n; i++) {
            if (tids[i] == self || blocks_signal(tids[i], park_signal())) continue;
            others++;
            straggler = tids[i];
            bool known = false;
            for (int j = 0; j < n_signaled && !known; j++) known = signaled[j] == tids[i];
            if (known) continue;
            if (n_signaled == MAX_THREADS) n = -1;
            else if (syscall(SYS_tgkill, pid, tids[i], park_signal()) == 0) signaled[n_signaled++] = tids[i];
        }
        if (n < 0) {
            release_all();
            return self;
        }
        if (__atomic_load_n(&parked, __ATOMIC_SEQ_CST) >= others) return 0;
        if (shim_now_ms() > deadline) {
            release_all();
            return straggler;
        }
        pause_us(100);
    }
}

// Whether fd is a socket with a send or receive timeout: a signal ends a blocked call on it with EINTR, SA_RESTART
// or not (the kernel restarts only untimed socket waits).
static bool has_timeout(int fd) {
    struct timeval timeout[2] = {{0}};
    socklen_t length = sizeof timeout[0];
    if (real.getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout[0], &length) < 0) return false;
    length = sizeof timeout[1];
    real.getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout[1], &length);
    return timeout[0].tv_sec || timeout[0].tv_usec || timeout[1].tv_sec || timeout[1].tv_usec;
}

static bool socket_call(long number) {
    switch (number) {
    case SYS_read: case SYS_write: case SYS_readv: case SYS_writev: case SYS_recvfrom: case SYS_sendto:
    case SYS_recvmsg: case SYS_sendmsg: case SYS_recvmmsg: case SYS_sendmmsg: case SYS_accept: case SYS_accept4:
    case SYS_connect:
        return true;
    default:
        return false;
    }
}

// What thread `tid` waits in: its system call's number and arguments (/proc/self/task/N/syscall). False when it
// is running, not in a call, or gone.
static bool thread_call(pid_t tid, long *number, unsigned long args[6]) {
    char line[256];
    if (!read_task_file(tid, "syscall", line, sizeof line) || line[0] < '0' || line[0] > '9') return false;
    char *rest;
    *number = strtol(line, &rest, 10);
    for (int i = 0; i < 6; i++) args[i] = strtoul(rest, &rest, 16);
    return true;
}

// A thread (not this one) blocked in a socket call on a socket with a timeout, which parking would fail with
// EINTR: its id, or 0.
static pid_t timed_waiter(void) {
    static pid_t tids[MAX_THREADS];
    pid_t self = (pid_t)syscall(SYS_gettid);
    int n = list_threads(tids, MAX_THREADS);
    for (int i = 0; i < n; i++) {
        long number;
        unsigned long args[6];
        if (tids[i] != self && thread_call(tids[i], &number, args) && socket_call(number) && has_timeout((int)args[0])) {
            return tids[i];
        }
    }
    return 0;
}

// Whether a thread that waits in (number, args) stays asleep while the others are parked: a futex wait with no
// timeout, or with an absolute one past the longest the window can last. Nothing else can wake it then: every
// other thread is parked. (jemalloc's background thread, for one, blocks every signal and waits so.)
static bool asleep_past_window(long number, const unsigned long args[6]) {
    if (number != SYS_futex) return false;
    int op = (int)args[1] & FUTEX_CMD_MASK;
    if (op != FUTEX_WAIT && op != FUTEX_WAIT_BITSET) return false;
    const struct timespec *timeout = (const struct timespec *)args[3];
    if (!timeout) return true;
    if (op == FUTEX_WAIT) return false;  // relative to when it began waiting, which is not known
    struct timespec now;
    clock_gettime((args[1] & FUTEX_CLOCK_REALTIME) ? CLOCK_REALTIME : CLOCK_MONOTONIC, &now);
    int64_t left_ms = (timeout->tv_sec - now.tv_sec) * 1000 + (timeout->tv_nsec - now.tv_nsec) / 1000000;
    return left_ms > DRAIN_MS + PARK_MS + 1000;
}

// A thread that blocks the park signal and may run while the others are parked: its id, or 0.
static pid_t sleeper_awake(void) {
    static pid_t tids[MAX_THREADS];
    pid_t self = (pid_t)syscall(SYS_gettid);
    int n = list_threads(tids, MAX_THREADS);
    for (int i = 0; i < n; i++) {
        if (tids[i] == self || !blocks_signal(tids[i], park_signal())) continue;
        long number;
        unsigned long args[6];
        if (!thread_call(tids[i], &number, args) || !asleep_past_window(number, args)) return tids[i];
    }
    return 0;
}

static int bytes_queued(int fd, unsigned long request) {
    int n = 0;
    return ioctl(fd, request, &n) == 0 ? n : -1;
}

// Moves what `from` holds into `to`, as much as `to` takes: bytes are peeked and consumed only once sent, so
// nothing is lost when it is full. With `wait`, waits for room until the deadline (false then); without, stops
// where it is full (*full). False on an error; *eof once `from` reads end of stream (which stays there).
static bool move_ready(int from, int to, uint64_t *carried, bool *eof, bool *full, bool wait, int64_t deadline) {
    *full = false;
    static char buffer[64 * 1024];
    for (;;) {
        ssize_t n = recv(from, buffer, sizeof buffer, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) *eof = true;
        if (n == 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) return true;
        if (n < 0) return false;
        ssize_t sent = send(to, buffer, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent > 0) {
            recv(from, buffer, (size_t)sent, MSG_DONTWAIT);  // what was peeked is there
            *carried += (uint64_t)sent;
            continue;
        }
        if (errno != EAGAIN && errno != EINTR) return false;
        *full = true;
        if (!wait) return true;
        int64_t left = deadline - shim_now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return false;
        }
        struct pollfd p = {.fd = to, .events = POLLOUT};
        poll(&p, 1, (int)(left < 100 ? left : 100));
    }
}

struct found {
    uint64_t connection;
    struct shim_sock *sock;
    int fds[MAX_FDS];
    size_t n;
};

static void collect(int fd, struct shim_sock *sock, void *context) {
    struct found *found = context;
    if (sock->state != SHIM_MESH || sock->handoff_connection != found->connection) return;
    if (found->sock && found->sock != sock) return;
    found->sock = sock;
    if (found->n < MAX_FDS) found->fds[found->n++] = fd;
}

static struct found find_locked(uint64_t connection) {
    struct found found = {.connection = connection};
    shim_fd_each_locked(0, ~0u, collect, &found);
    return found;
}

// Parks the app, carries the loopback socket's bytes over and swaps the direct socket in (*taken). 0, or an errno
// with `why` filled: nothing changed for the app, or (*taken) carrying its bytes over failed and the connection
// was reset rather than left with a gap.
static int take_over_locked(uint64_t connection, int direct, int pair, uint64_t *carried, bool *taken, char *why,
                            size_t size) {
    struct found found = find_locked(connection);
    if (!found.n) {
        snprintf(why, size, "the app no longer holds the connection in this process");
        return ENOENT;
    }
    if (found.n == MAX_FDS) {
        snprintf(why, size, "the app holds the connection at too many fd numbers");
        return EMFILE;
    }
    int app = found.fds[0];
    socklen_t length;
    struct sigaction current;
    sigaction(park_signal(), NULL, &current);
    if (current.sa_handler != park_handler) {
        if (current.sa_handler != SIG_DFL || (current.sa_flags & SA_SIGINFO)) {
            snprintf(why, size, "the app handles signal %d itself", park_signal());
            return EBUSY;
        }
        struct sigaction action = {.sa_handler = park_handler, .sa_flags = SA_RESTART};
        sigfillset(&action.sa_mask);
        sigaction(park_signal(), &action, NULL);
    }
    // While the app runs, the shim carries its bytes on, until the app has read all it was given and no thread
    // waits in a timed socket call (such a waiter gets the peer's bytes the direct socket holds: it may be waiting
    // for them); bytes arriving later wait in the direct socket for the app.
    // Small loopback buffers leave little of the app's own bytes to carry once it is parked.
    int small = SMALL_BUFFER;
    real.setsockopt(app, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    real.setsockopt(pair, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    pthread_mutex_unlock(&shim_lock);
    // A first look, without the lock (it reads /proc): checked again once the app is parked.
    pid_t sharer = shared_with(app);
    if (sharer) {
        pthread_mutex_lock(&shim_lock);
        say_shared(sharer, why, size);
        return EBUSY;
    }
    int64_t start = shim_now_ms();
    bool eof = false, moved = true, full = false, peer_eof = false, pair_full;
    uint64_t given = 0;
    int unread = 0, unsent = 0;
    pid_t waiter = 0, awake = 0;
    for (;;) {
        unread = bytes_queued(app, FIONREAD);
        unsent = bytes_queued(pair, SIOCOUTQ);  // given to the app's socket, not yet in it
        if (unread < 0 || unsent < 0) break;
        waiter = awake = 0;
        if (unread == 0 && unsent == 0) {
            waiter = timed_waiter();
            awake = waiter ? 0 : sleeper_awake();
            int waiting = bytes_queued(pair, FIONREAD) + bytes_queued(app, SIOCOUTQ);
            if (!waiter && !awake && (waiting <= 2 * SMALL_BUFFER || shim_now_ms() - start > SETTLE_MS / 3)) break;
        }
        if (shim_now_ms() - start > SETTLE_MS) break;
        moved = move_ready(pair, direct, carried, &eof, &full, false, 0);
        if (!moved || eof) break;
        // The waiter may wait for the peer's next bytes: give it those the direct socket holds now.
        bool feed = waiter && !peer_eof;
        if (feed && !move_ready(direct, pair, &given, &peer_eof, &pair_full, false, 0)) {
            moved = false;
            break;
        }
        struct pollfd p[2] = {{.fd = pair, .events = POLLIN},
                              {.fd = direct, .events = (short)((full ? POLLOUT : 0) | (feed ? POLLIN : 0))}};
        poll(p, 2, 1);
    }
    pthread_mutex_lock(&shim_lock);
    if (!moved || eof || unread != 0 || unsent != 0 || waiter || awake) {
        if (!moved) snprintf(why, size, "copying between the sockets failed: %s", strerror(errno));
        else if (eof) snprintf(why, size, "the app shut the connection down for writing");
        else if (unread || unsent) {
            snprintf(why, size, "the app left %d received bytes unread for %d ms", unread + unsent, SETTLE_MS);
        }
        else if (waiter) snprintf(why, size, "thread %d kept waiting in a call on a socket with a timeout", (int)waiter);
        else snprintf(why, size, "thread %d blocks signal %d and did not stay asleep", (int)awake, park_signal());
        return EAGAIN;
    }
    // The app may have closed or duplicated the fd meanwhile.
    found = find_locked(connection);
    if (!found.n || found.n == MAX_FDS) {
        snprintf(why, size, "the app closed the connection meanwhile");
        return ENOENT;
    }
    app = found.fds[0];
    int replacements[MAX_FDS];
    for (size_t i = 0; i < found.n; i++) {
        replacements[i] = real.fcntl(direct, F_DUPFD_CLOEXEC, 0);
        if (replacements[i] < 0) {
            int error = errno;
            for (size_t j = 0; j < i; j++) real.close(replacements[j]);
            snprintf(why, size, "no fd for the direct socket: %s", strerror(error));
            return error;
        }
    }

    // Checked again right before the signal: a blocked socket call with a timeout would fail with EINTR, and a
    // thread that cannot be parked must be asleep.
    waiter = timed_waiter();
    awake = waiter ? 0 : sleeper_awake();
    pid_t straggler = waiter || awake ? 0 : park_all();
    int late = waiter || awake || straggler ? 0 : bytes_queued(app, FIONREAD) + bytes_queued(pair, SIOCOUTQ);
    // Again, now that no thread of the app can fork or spawn: one may have while it settled.
    sharer = waiter || awake || straggler || late ? 0 : shared_with(app);
    if (late || sharer) release_all();
    if (waiter || awake || straggler || late || sharer) {
        for (size_t i = 0; i < found.n; i++) real.close(replacements[i]);
        if (waiter) snprintf(why, size, "thread %d waits in a call on a socket with a timeout", (int)waiter);
        else if (awake) snprintf(why, size, "thread %d blocks signal %d and is not asleep", (int)awake, park_signal());
        else if (straggler) snprintf(why, size, "thread %d did not stop within %d ms", (int)straggler, PARK_MS);
        else if (late) snprintf(why, size, "bytes for the app arrived while it was being parked");
        else say_shared(sharer, why, size);
        return EAGAIN;
    }
    // The app is parked: nothing moves on its side until release_all().
    int nodelay = 0;
    length = sizeof nodelay;
    real.getsockopt(app, IPPROTO_TCP, TCP_NODELAY, &nodelay, &length);
    int old = real.fcntl(app, F_DUPFD_CLOEXEC, 0);
    int error = 0;
    *taken = true;
    for (size_t i = 0; i < found.n; i++) {
        int swapped = shim_swap_locked(found.sock, found.fds[i], replacements[i], false);
        if (swapped && !error) error = swapped;
    }
    real.setsockopt(direct, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
    shim_replay_opts_locked(found.sock, direct);
    // The app's last bytes on the loopback socket, then its end of stream: everything it wrote goes first.
    if (old >= 0) shutdown(old, SHUT_WR);
    int64_t deadline = shim_now_ms() + DRAIN_MS;
    eof = false;
    while (!error && old >= 0 && !eof) {
        if (!move_ready(pair, direct, carried, &eof, &full, true, deadline)) error = errno ? errno : ETIMEDOUT;
        else if (!eof && shim_now_ms() > deadline) error = ETIMEDOUT;
        else if (!eof) {
            struct pollfd p = {.fd = pair, .events = POLLIN};
            poll(&p, 1, 10);
        }
    }
    if (old < 0) error = errno;
    if (error) {
        // A gap in the stream must not go unnoticed: reset the connection (connect to AF_UNSPEC aborts it).
        struct sockaddr unspec = {.sa_family = AF_UNSPEC};
        real.connect(direct, &unspec, sizeof unspec);
        snprintf(why, size, "carrying the app's last bytes over failed (%s): connection reset", strerror(error));
    }
    if (old >= 0) real.close(old);
    shim_sock_forget_swaps_locked(found.sock);
    release_all();
    return error;
}

void shim_handoff_locked(const Boxermesh__V1__ShimHandoff *handoff, int direct, int pair) {
    char why[160] = "";
    uint64_t carried = 0;
    bool taken = false;
    int error = take_over_locked(handoff->connection, direct, pair, &carried, &taken, why, sizeof why);
    real.close(direct);
    real.close(pair);
    SHIM_DEBUG("connection %llu: %s%s (%llu bytes carried over)", (unsigned long long)handoff->connection,
               taken ? "the app holds the direct socket " : "stays with the node: ", why, (unsigned long long)carried);
    Boxermesh__V1__ShimHandoffResult body = BOXERMESH__V1__SHIM_HANDOFF_RESULT__INIT;
    body.connection = handoff->connection;
    body.error = error;
    body.reason = why;
    body.carried = carried;
    body.taken = taken;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_HANDOFF_RESULT;
    request.handoff_result = &body;
    shim_node_notify_locked(&request);
}
