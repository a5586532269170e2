// boxer-mesh preload shim: shared declarations.
//
// The shim runs inside an unmodified app (LD_PRELOAD) and hooks only the control plane of its sockets: names,
// connect/bind/listen/accept, and the fd bookkeeping (dup/close/epoll_ctl/sockopts) needed to swap a real socket,
// handed over by the node with SCM_RIGHTS, into the app's fd number. Data never passes through the shim.
//
// Files, one concern each:
//   shim.c           configuration from the environment, real symbols, debug log, fork handling
//   shim_addr.c      mesh addresses <-> sockaddr
//   shim_node.c      the connection to the node: requests, replies, the service thread, timeouts
//   shim_fdtable.c   per-fd state shared by dups; close/dup/fcntl hooks
//   shim_epoll.c     shadow of the app's epoll registrations, re-added after each swap
//   shim_connect.c   connect (blocking and non-blocking), the fd swap, socket option record/replay
//   shim_socket.c    socket/bind/listen/accept, getsockname/getpeername
//   shim_names.c     getaddrinfo and friends, gethostname/uname
//   shim_handoff.c   taking over the direct socket of a relayed connection after its upgrade (threads parked)
//   shim_spare.c     spare links the node lent: a connect to their peer claims one without asking the node
#ifndef BOXER_SHIM_H
#define BOXER_SHIM_H

#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <netdb.h>

#include "boxer_mesh.pb-c.h"

// Only hooks are exported; everything else is hidden by -fvisibility=hidden.
#define SHIM_EXPORT __attribute__((visibility("default")))

// Safety limits on waiting for the node: a node that stops answering must not hang the app forever.
#define SHIM_CONNECT_TIMEOUT_MS 30000
#define SHIM_REQUEST_TIMEOUT_MS 10000

// ---- shim.c --------------------------------------------------------------------------------------------------

struct shim_config {
    bool active;                 // BOXER_SHIM_SOCKET set and the rest valid: otherwise every hook passes through
    bool debug;                  // BOXER_SHIM_DEBUG=1
    struct sockaddr_un node_addr;
    socklen_t node_addr_len;
    uint32_t subnet, netmask;    // host byte order
    uint32_t mesh_ip;            // host byte order
    char mesh_name[HOST_NAME_MAX + 1];
    char hosts_path[PATH_MAX];   // BOXER_MESH_HOSTS: the node's hosts file, which answers lookups without the node
};
extern struct shim_config shim_cfg;

// The next definition of every hooked function (dlsym RTLD_NEXT).
struct shim_real {
    int (*socket)(int, int, int);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*bind)(int, const struct sockaddr *, socklen_t);
    int (*listen)(int, int);
    int (*accept)(int, struct sockaddr *, socklen_t *);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
    int (*getsockname)(int, struct sockaddr *, socklen_t *);
    int (*getpeername)(int, struct sockaddr *, socklen_t *);
    int (*setsockopt)(int, int, int, const void *, socklen_t);
    int (*getsockopt)(int, int, int, void *, socklen_t *);
    int (*close)(int);
    int (*close_range)(unsigned int, unsigned int, int);
    void (*closefrom)(int);
    int (*dup)(int);
    int (*dup2)(int, int);
    int (*dup3)(int, int, int);
    int (*fcntl)(int, int, ...);
    int (*fcntl64)(int, int, ...);
    int (*epoll_ctl)(int, int, int, struct epoll_event *);
    int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    void (*freeaddrinfo)(struct addrinfo *);
    struct hostent *(*gethostbyname)(const char *);
    int (*gethostbyname_r)(const char *, struct hostent *, char *, size_t, struct hostent **, int *);
    struct hostent *(*gethostbyname2)(const char *, int);
    int (*gethostbyname2_r)(const char *, int, struct hostent *, char *, size_t, struct hostent **, int *);
    struct hostent *(*gethostbyaddr)(const void *, socklen_t, int);
    int (*gethostbyaddr_r)(const void *, socklen_t, int, struct hostent *, char *, size_t, struct hostent **,
                           int *);
    int (*getnameinfo)(const struct sockaddr *, socklen_t, char *, socklen_t, char *, socklen_t, int);
    int (*gethostname)(char *, size_t);
    int (*uname)(struct utsname *);
};
extern struct shim_real real;

// True in the child of a vfork (or a clone without fork handlers): it shares our memory but has fds of its
// own, so it must not touch shim state. (Python's subprocess calls close_range there before exec.)
bool shim_in_vfork_child(void);

// Loads configuration and real symbols once (also when a hook runs before our constructor) and tells whether
// the shim is active. Every hook starts with it.
bool shim_enabled(void);

void shim_log(const char *format, ...) __attribute__((format(printf, 1, 2)));
#define SHIM_DEBUG(...)                                                                                          \
    do {                                                                                                         \
        if (shim_cfg.debug) shim_log(__VA_ARGS__);                                                               \
    } while (0)

// One lock for all shim state (fd table, epoll shadow, node connection, waiters). Never held while waiting for
// the node; only around short syscalls.
extern pthread_mutex_t shim_lock;

// ---- shim_addr.c ---------------------------------------------------------------------------------------------

// An AF_INET address, or an AF_INET6 v4-mapped one, inside the mesh subnet: its address (host order) and port.
bool shim_mesh_sockaddr(const struct sockaddr *addr, socklen_t len, uint32_t *ip, uint16_t *port);
// The IPv4 address (host order) in an AF_INET or v4-mapped AF_INET6 sockaddr.
bool shim_sockaddr_ipv4(const struct sockaddr *addr, socklen_t len, uint32_t *ip, uint16_t *port);
bool shim_in_subnet(uint32_t ip);
// Builds ip:port in `family` (v4-mapped for AF_INET6); returns the length.
socklen_t shim_make_sockaddr(int family, uint32_t ip, uint16_t port, struct sockaddr_storage *out);
// Copies an address out the way the kernel does: truncated to *len, *len set to the full size.
void shim_copy_sockaddr(const struct sockaddr_storage *from, socklen_t from_len, struct sockaddr *to,
                        socklen_t *to_len);
const char *shim_ip_string(uint32_t ip, char buf[INET_ADDRSTRLEN]);

// ---- shim_hosts.c --------------------------------------------------------------------------------------------

// The node's hosts file, up to the line that starts the system's part (HostsFile.swift writes both), for `name`
// (then *ip gets its address) or, when name is NULL, for *ip (then found[size] gets its name): 0, ENOENT when the
// mesh has no such member, ERANGE when the name does not fit, EAGAIN when there is no file to read or it says the
// node's table is not in step (ask the node).
int shim_hosts_lookup(const char *name, uint32_t *ip, char *found, size_t size);

// ---- shim_node.c ---------------------------------------------------------------------------------------------

struct shim_sock;

// A request waiting for its reply. Blocking callers wait on the stack; a non-blocking connect leaves a heap
// waiter whose reply the service thread completes (shim_connect_complete_locked).
struct shim_waiter {
    uint64_t id;
    int64_t deadline_ms;
    struct shim_waiter *next;
    bool done;
    int error;                              // transport failure (ENETUNREACH, ETIMEDOUT) or 0
    Boxermesh__V1__ShimResponse *response;  // owned by the waiter once done
    int fd;                                 // attached SCM_RIGHTS fd or -1
    struct shim_sock *sock;                 // async connect: target socket (NULL once the app closed it)
    int app_fd;                             // async connect: the app's fd number
};

// Sends a request and waits for its reply. Returns 0 with *response (free with shim_response_free) and *fd
// (-1 if none), or an errno: ENETUNREACH when the node is unreachable or went away, ETIMEDOUT.
int shim_node_call(Boxermesh__V1__ShimRequest *request, int timeout_ms, Boxermesh__V1__ShimResponse **response,
                   int *fd);
// Whether fd still refers to the file with this dev and ino: not an fd the app closed behind the shim's back,
// its number since reused.
bool shim_fd_is(int fd, dev_t dev, ino_t ino);
// Milliseconds and microseconds on the monotonic clock (deadlines, timings).
int64_t shim_now_ms(void);
int64_t shim_now_us(void);
// Connects to the node now if the process has no connection yet: a mesh name was looked up, so a connect()
// is likely next, and it should not wait for the node to start the thread that serves this process.
void shim_node_warm(void);
// Sends a message the node does not answer (id 0). Lock held.
void shim_node_notify_locked(Boxermesh__V1__ShimRequest *request);
// Sends a non-blocking connect request; its reply is handled on the service thread. Lock held. Returns 0 or
// an errno; on success the heap waiter is linked to sock.
int shim_node_send_async_locked(Boxermesh__V1__ShimRequest *request, struct shim_sock *sock, int app_fd);
void shim_response_free(Boxermesh__V1__ShimResponse *response);
// The app is about to close (or dup onto) the fds first..last: if our node connection is among them, give it up.
void shim_node_vacate_locked(unsigned int first, unsigned int last);
bool shim_node_is_fd(int fd);
// In a forked child: forget the parent's connection, thread and waiters.
void shim_node_after_fork_child(void);

// ---- shim_spare.c --------------------------------------------------------------------------------------------

// A spare link the node lent this process (from the service thread; the fd is ours from now on).
void shim_spare_add_locked(const Boxermesh__V1__ShimSpare *spare, int fd);
// The node wants lent spare `id` back.
void shim_spare_recall_locked(uint64_t id);
// The node trusts that ip takes connections on port for listener_ms more (from a connect's reply).
void shim_spare_trust_locked(uint32_t ip, uint16_t port, uint32_t listener_ms);
// A connect to ip:port: a lent spare claimed for it (its id in *id; the node is told by shim_spare_claimed_locked),
// with the connection's mesh addresses filled in, or -1 (ask the node). Lent spares found dead on the way go back
// to the node.
int shim_spare_claim_locked(uint32_t ip, uint16_t port, uint64_t *id, Boxermesh__V1__ShimConnection *connection);
// Tells the node that lent spare `id` was claimed for `port`, setup_us after the connect began.
void shim_spare_claimed_locked(uint64_t id, uint16_t port, int64_t setup_us);
// The app is about to close (or dup onto) the fds first..last: lent spares among them go back to the node.
void shim_spare_vacate_locked(unsigned int first, unsigned int last);
bool shim_spare_is_fd(int fd);
// Closes every lent spare we hold, telling nobody (the node connection is gone, or this is a forked child).
void shim_spare_drop_all_locked(void);

// ---- shim_fdtable.c ------------------------------------------------------------------------------------------

enum shim_state {
    SHIM_TCP,         // unconnected TCP socket: may still connect into the mesh
    SHIM_CONNECTING,  // non-blocking mesh connect in flight: a quiet placeholder holds the fd
    SHIM_BLOCKING,    // blocking mesh connect in flight: the app's socket still holds the fd
    SHIM_MESH,        // connected mesh socket (connected or accepted)
    SHIM_FAILED,      // non-blocking mesh connect failed: a fresh TCP socket holds the fd, so_error pending
    SHIM_LISTENING,   // listening socket announced to the node
    SHIM_EPOLL,       // an epoll fd with shadowed registrations
};

struct shim_opt {
    int level, name;
    socklen_t len;
    unsigned char value[32];
};

struct shim_epreg {
    int epfd, fd;
    struct epoll_event event;
};

// State of one socket, shared by all fds (dups) that refer to it in this process.
struct shim_sock {
    int refs;
    enum shim_state state;
    int family;
    bool bound_mesh;               // the app bound to the mesh address (we bound to "any")
    uint32_t local_ip, peer_ip;    // SHIM_MESH
    uint16_t local_port, peer_port;
    uint16_t listen_port;          // SHIM_LISTENING, once the node accepted it
    pid_t listen_owner;            // only the process that announced the port withdraws it
    int so_error;                  // SHIM_FAILED: what getsockopt(SO_ERROR) reports once
    struct shim_waiter *pending;   // SHIM_CONNECTING
    struct shim_opt *opts;         // recorded setsockopt calls, replayed on the swapped-in socket
    size_t n_opts;
    struct shim_epreg *regs;       // epoll registrations of fds referring to this socket
    size_t n_regs;
    uint64_t handoff_connection;   // SHIM_MESH, relayed: the node may hand over its direct socket (ShimHandoff)
};

// Whether the socket's fd may still be swapped (so its epoll registrations and options are recorded).
bool shim_sock_swappable(const struct shim_sock *sock);

// Lock-free: may the fd have state? (Untracked fds never take the lock.)
bool shim_fd_tracked(int fd);
struct shim_sock *shim_fd_get_locked(int fd);
struct shim_sock *shim_sock_new(enum shim_state state, int family);
// Points fd at sock (taking a reference); the previous entry must have been forgotten.
void shim_fd_set_locked(int fd, struct shim_sock *sock);
// Drops fd's entry (the app closes it or dups over it). Returns a port to withdraw with ShimUnlisten, or 0.
uint16_t shim_fd_forget_locked(int fd);
void shim_sock_ref(struct shim_sock *sock);
void shim_sock_unref_locked(struct shim_sock *sock);
// Calls f on every tracked fd (for closing an epoll fd or a range).
void shim_fd_each_locked(unsigned int first, unsigned int last, void (*f)(int fd, struct shim_sock *, void *),
                         void *context);
// Finds an existing TCP socket's state or makes one for an untracked AF_INET/AF_INET6 TCP fd. NULL otherwise.
struct shim_sock *shim_fd_adopt_tcp_locked(int fd);
void shim_send_unlisten(uint16_t port);

// ---- shim_epoll.c --------------------------------------------------------------------------------------------

// Removes fd's registrations from the kernel (before a swap) / adds them back (after it).
void shim_epoll_detach_locked(struct shim_sock *sock, int fd);
void shim_epoll_attach_locked(struct shim_sock *sock, int fd);
// Forgets the registrations of fd (closed) or of the epoll fd epfd (closed).
void shim_epoll_forget_fd_locked(struct shim_sock *sock, int fd);
void shim_epoll_forget_epfd_locked(int epfd);

// ---- shim_connect.c ------------------------------------------------------------------------------------------

// The node answered a non-blocking connect (service thread, lock held). Takes ownership of fd.
void shim_connect_complete_locked(struct shim_waiter *waiter);
// Sets the mesh addresses of a connection from the node's description.
void shim_sock_set_connection(struct shim_sock *sock, const Boxermesh__V1__ShimConnection *connection);
// Sets the options the app set on sock (recorded by setsockopt) on fd, a socket the node handed over; they
// override the node's own.
void shim_replay_opts_locked(struct shim_sock *sock, int fd);
// Puts the socket `replacement` at the app's fd number `fd`, keeping the app's O_NONBLOCK, FD_CLOEXEC and epoll
// registrations; closes `replacement`. With `wake`, the old file is shut down afterwards. 0 or an errno.
int shim_swap_locked(struct shim_sock *sock, int fd, int replacement, bool wake);
// No more swaps for sock: drops its epoll shadow, recorded options and handoff connection.
void shim_sock_forget_swaps_locked(struct shim_sock *sock);
// Copies the options recorded on `from` to `to` (a listener's, for a relayed socket accepted on it).
void shim_copy_opts_locked(const struct shim_sock *from, struct shim_sock *to);

// ---- shim_handoff.c ------------------------------------------------------------------------------------------

// The node hands over the direct socket of relayed connection handoff->connection (service thread, lock held;
// may release it while it waits). Takes ownership of both fds; answers the node with ShimHandoffResult.
void shim_handoff_locked(const Boxermesh__V1__ShimHandoff *handoff, int direct, int pair);

#endif
