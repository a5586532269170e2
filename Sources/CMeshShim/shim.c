// Configuration from the environment, the real libc symbols, the debug log, the lock and fork handling.
#include "shim.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct shim_config shim_cfg;
struct shim_real real;
pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pid_t shim_pid;  // the process that owns the shim state (updated in forked children)

bool shim_in_vfork_child(void) {
    return getpid() != shim_pid;
}

void shim_log(const char *format, ...) {
    int saved = errno;
    char line[512];
    int n = snprintf(line, sizeof line, "boxer-shim[%d]: ", (int)getpid());
    va_list args;
    va_start(args, format);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, format, args);
    va_end(args);
    size_t len = strlen(line);
    line[len++] = '\n';
    // One write per line so that lines of several processes sharing stderr do not interleave.
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
    errno = saved;
}

static void load_real_symbols(void) {
#define LOAD(name) real.name = (__typeof__(real.name))dlsym(RTLD_NEXT, #name)
    LOAD(socket);
    LOAD(connect);
    LOAD(bind);
    LOAD(listen);
    LOAD(accept);
    LOAD(accept4);
    LOAD(getsockname);
    LOAD(getpeername);
    LOAD(setsockopt);
    LOAD(getsockopt);
    LOAD(close);
    LOAD(close_range);
    LOAD(closefrom);
    LOAD(dup);
    LOAD(dup2);
    LOAD(dup3);
    LOAD(fcntl);
    LOAD(fcntl64);
    LOAD(epoll_ctl);
    LOAD(getaddrinfo);
    LOAD(freeaddrinfo);
    LOAD(gethostbyname);
    LOAD(gethostbyname_r);
    LOAD(gethostbyname2);
    LOAD(gethostbyname2_r);
    LOAD(gethostbyaddr);
    LOAD(gethostbyaddr_r);
    LOAD(getnameinfo);
    LOAD(gethostname);
    LOAD(uname);
#undef LOAD
}

// Misconfiguration is reported even without BOXER_SHIM_DEBUG: the app would otherwise silently lose the mesh.
static bool config_error(const char *what, const char *value) {
    shim_log("invalid %s '%s'; the shim stays inactive", what, value ? value : "(unset)");
    return false;
}

static bool parse_node_socket(const char *value) {
    struct sockaddr_un *addr = &shim_cfg.node_addr;
    size_t len = strlen(value);
    addr->sun_family = AF_UNIX;
    if (value[0] == '@') {  // abstract namespace: a leading NUL byte, no terminator
        if (len < 2 || len > sizeof addr->sun_path) return config_error("BOXER_SHIM_SOCKET", value);
        addr->sun_path[0] = '\0';
        memcpy(addr->sun_path + 1, value + 1, len - 1);
        shim_cfg.node_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        if (len >= sizeof addr->sun_path) return config_error("BOXER_SHIM_SOCKET", value);
        memcpy(addr->sun_path, value, len + 1);
        shim_cfg.node_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    return true;
}

static bool parse_ipv4(const char *text, uint32_t *ip) {
    struct in_addr addr;
    if (!text || inet_pton(AF_INET, text, &addr) != 1) return false;
    *ip = ntohl(addr.s_addr);
    return true;
}

static bool parse_subnet(const char *value) {
    char text[INET_ADDRSTRLEN + 4];
    if (!value || strlen(value) >= sizeof text) return config_error("BOXER_MESH_SUBNET", value);
    strcpy(text, value);
    char *slash = strchr(text, '/');
    if (!slash) return config_error("BOXER_MESH_SUBNET", value);
    *slash = '\0';
    char *end;
    long prefix = strtol(slash + 1, &end, 10);
    uint32_t network;
    if (*end || end == slash + 1 || prefix < 1 || prefix > 32 || !parse_ipv4(text, &network)) {
        return config_error("BOXER_MESH_SUBNET", value);
    }
    shim_cfg.netmask = prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix);
    shim_cfg.subnet = network & shim_cfg.netmask;
    return true;
}

static bool load_config(void) {
    const char *socket_path = getenv("BOXER_SHIM_SOCKET");
    if (!socket_path || !*socket_path) return false;
    const char *debug = getenv("BOXER_SHIM_DEBUG");
    shim_cfg.debug = debug && strcmp(debug, "1") == 0;
    if (!parse_node_socket(socket_path) || !parse_subnet(getenv("BOXER_MESH_SUBNET"))) return false;
    const char *ip = getenv("BOXER_MESH_IP");
    if (!parse_ipv4(ip, &shim_cfg.mesh_ip) || !shim_in_subnet(shim_cfg.mesh_ip)) {
        return config_error("BOXER_MESH_IP", ip);
    }
    const char *name = getenv("BOXER_MESH_NAME");
    if (name) snprintf(shim_cfg.mesh_name, sizeof shim_cfg.mesh_name, "%s", name);
    const char *hosts = getenv("BOXER_MESH_HOSTS");
    if (hosts && strlen(hosts) < sizeof shim_cfg.hosts_path) strcpy(shim_cfg.hosts_path, hosts);
    return true;
}

static void before_fork(void) {
    pthread_mutex_lock(&shim_lock);
}

static void after_fork_parent(void) {
    pthread_mutex_unlock(&shim_lock);
}

static void after_fork_child(void) {
    shim_pid = getpid();
    shim_node_after_fork_child();
    pthread_mutex_unlock(&shim_lock);
}

static void init(void) {
    load_real_symbols();
    shim_cfg.active = load_config();
    if (!shim_cfg.active) return;
    shim_pid = getpid();
    // A forked child must open its own node connection: the parent's is shared with it after fork.
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    char ip[INET_ADDRSTRLEN], net[INET_ADDRSTRLEN];
    SHIM_DEBUG("active: node %s%s, mesh %s/%d, me %s (%s)", shim_cfg.node_addr.sun_path[0] ? "" : "@",
               shim_cfg.node_addr.sun_path + (shim_cfg.node_addr.sun_path[0] ? 0 : 1),
               shim_ip_string(shim_cfg.subnet, net), __builtin_popcount(shim_cfg.netmask),
               shim_ip_string(shim_cfg.mesh_ip, ip), shim_cfg.mesh_name);
}

bool shim_enabled(void) {
    pthread_once(&init_once, init);
    return shim_cfg.active;
}

// Only reads the environment and looks up symbols: no threads, no connection (those come on first need).
__attribute__((constructor)) static void shim_constructor(void) {
    shim_enabled();
}
