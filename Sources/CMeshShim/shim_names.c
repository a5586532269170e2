// Names. glibc resolves through nscd and internal DNS calls a preloaded connect() never sees, so the resolver entry
// points themselves are hooked. A single-label name (no dot, not "localhost", not numeric) is looked up in the
// node's hosts file (BOXER_MESH_HOSTS: the mesh's membership as the broker pushes it, replaced on every change),
// and asked of the node only when there is none or it says the node's table is not in step; the answer is turned
// into a numeric lookup by the real getaddrinfo, so the real freeaddrinfo frees it. Whatever the mesh does not know
// (ENOENT) or the node cannot answer goes on to the real resolver (/etc/hosts, DNS).
#include "shim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool is_mesh_name(const char *name) {
    struct in_addr numeric;
    size_t len = name ? strlen(name) : 0;
    return len > 0 && len <= 63 && !strchr(name, '.') && !strchr(name, ':') && strcasecmp(name, "localhost") != 0 &&
           !inet_aton(name, &numeric);  // inet_aton also takes "1234" and "0x7f"
}

// 0 with the address, ENOENT (not a mesh name) or another errno (node unreachable).
static int resolve(const char *name, uint32_t *ip) {
    int known = shim_hosts_lookup(name, ip, NULL, 0);
    if (known != EAGAIN) {
        char text[INET_ADDRSTRLEN];
        SHIM_DEBUG("resolve %s from the hosts file: %s", name, known ? strerror(known) : shim_ip_string(*ip, text));
        if (!known) shim_node_warm();
        return known;
    }
    Boxermesh__V1__ShimResolve body = BOXERMESH__V1__SHIM_RESOLVE__INIT;
    body.name = (char *)name;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_RESOLVE;
    request.resolve = &body;
    Boxermesh__V1__ShimResponse *response;
    int fd;
    int error = shim_node_call(&request, SHIM_REQUEST_TIMEOUT_MS, &response, &fd);
    if (!error) error = response->error;
    if (!error && response->body_case != BOXERMESH__V1__SHIM_RESPONSE__BODY_RESOLVED) error = EPROTO;
    if (!error) *ip = response->resolved->address;
    char text[INET_ADDRSTRLEN];
    SHIM_DEBUG("resolve %s: %s%s", name, error ? strerror(error) : shim_ip_string(*ip, text),
               error ? ", asking the system resolver" : "");
    shim_response_free(response);
    return error;
}

// The name of a mesh address into name[size]: 0, or an errno (ERANGE when it does not fit).
static int reverse(uint32_t ip, char *name, size_t size) {
    int known = shim_hosts_lookup(NULL, &ip, name, size);
    if (known != EAGAIN) return known;
    Boxermesh__V1__ShimReverse body = BOXERMESH__V1__SHIM_REVERSE__INIT;
    body.address = ip;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_REVERSE;
    request.reverse = &body;
    Boxermesh__V1__ShimResponse *response;
    int fd;
    int error = shim_node_call(&request, SHIM_REQUEST_TIMEOUT_MS, &response, &fd);
    if (!error) error = response->error;
    if (!error && (response->body_case != BOXERMESH__V1__SHIM_RESPONSE__BODY_RESOLVED ||
                   !*response->resolved->name)) {
        error = EPROTO;
    }
    if (!error && strlen(response->resolved->name) >= size) error = ERANGE;
    if (!error) strcpy(name, response->resolved->name);
    char text[INET_ADDRSTRLEN];
    SHIM_DEBUG("reverse %s: %s", shim_ip_string(ip, text), error ? strerror(error) : name);
    shim_response_free(response);
    return error;
}

// The IPv4 address of an AF_INET or v4-mapped AF_INET6 address in the mesh, as gethostbyaddr takes it.
static bool mesh_address_bytes(const void *addr, socklen_t len, int type, uint32_t *ip) {
    if (!addr) return false;
    if (type == AF_INET && len == 4) {
        uint32_t v4;
        memcpy(&v4, addr, 4);
        *ip = ntohl(v4);
    } else if (type == AF_INET6 && len == 16 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr)) {
        uint32_t v4;
        memcpy(&v4, (const uint8_t *)addr + 12, 4);
        *ip = ntohl(v4);
    } else {
        return false;
    }
    return shim_in_subnet(*ip);
}

SHIM_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                            struct addrinfo **result) {
    int family = hints ? hints->ai_family : AF_UNSPEC;
    int flags = hints ? hints->ai_flags : 0;
    uint32_t ip;
    // AI_NUMERICHOST: the real getaddrinfo answers EAI_NONAME for a name, without asking anyone.
    if (!shim_enabled() || !is_mesh_name(node) || (flags & AI_NUMERICHOST) ||
        (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) || resolve(node, &ip) != 0) {
        return real.getaddrinfo(node, service, hints, result);
    }
    // Mesh addresses are IPv4: an IPv6-only lookup gets them v4-mapped with AI_V4MAPPED, else nothing.
    if (family == AF_INET6 && !(flags & AI_V4MAPPED)) return EAI_NONAME;
    char mapped[INET6_ADDRSTRLEN] = "::ffff:";
    char *dotted = mapped + strlen(mapped);
    struct in_addr v4 = {.s_addr = htonl(ip)};
    inet_ntop(AF_INET, &v4, dotted, INET_ADDRSTRLEN);
    // AI_ADDRCONFIG could hide the address on a host without a configured IPv4 interface; the node reaches it.
    struct addrinfo numeric = {.ai_family = family, .ai_flags = flags & ~AI_ADDRCONFIG};
    if (hints) {
        numeric.ai_socktype = hints->ai_socktype;
        numeric.ai_protocol = hints->ai_protocol;
    }
    int rc = real.getaddrinfo(family == AF_INET6 ? mapped : dotted, service, &numeric, result);
    // The canonical name of a numeric lookup is the number; the app asked for a name.
    if (rc == 0 && (flags & AI_CANONNAME) && (*result)->ai_canonname) {
        char *canonical = strdup(node);
        if (canonical) {
            free((*result)->ai_canonname);  // glibc allocates it apart from the list and freeaddrinfo frees it
            (*result)->ai_canonname = canonical;
        }
    }
    return rc;
}

// Lists from getaddrinfo always come from the real one (above), so the real freeaddrinfo frees them; hooked so
// that both halves of the pair resolve to the same place.
SHIM_EXPORT void freeaddrinfo(struct addrinfo *list) {
    shim_enabled();
    real.freeaddrinfo(list);
}

// Fills a hostent for one address inside buffer[size]: 0 or ERANGE.
static int fill_hostent(struct hostent *host, const char *name, int type, const void *addr, int addr_len,
                        char *buffer, size_t size) {
    if (!buffer) return ERANGE;
    size_t misalign = (uintptr_t)buffer % sizeof(char *);
    size_t skip = misalign ? sizeof(char *) - misalign : 0;  // the pointer arrays come first
    if (skip + 3 * sizeof(char *) + (size_t)addr_len + strlen(name) + 1 > size) return ERANGE;
    char **aliases = (char **)(buffer + skip);
    char **list = aliases + 1;
    char *address = (char *)(list + 2);
    char *official = address + addr_len;
    aliases[0] = NULL;
    memcpy(address, addr, (size_t)addr_len);
    list[0] = address;
    list[1] = NULL;
    strcpy(official, name);
    host->h_name = official;
    host->h_aliases = aliases;
    host->h_addrtype = type;
    host->h_length = addr_len;
    host->h_addr_list = list;
    return 0;
}

// For the non-reentrant calls, like glibc's static result (here per thread).
static __thread struct {
    struct hostent host;
    char buffer[256];
} static_host;

// gethostbyname(2)(_r) for a mesh name. Returns false when the real resolver should answer instead; else sets
// *found (NULL with *h_error NO_DATA for an IPv6 lookup) and *error (0 or ERANGE).
static bool by_name(const char *name, int family, struct hostent *host, char *buffer, size_t size,
                    struct hostent **found, int *h_error, int *error) {
    uint32_t ip;
    if (!shim_enabled() || !is_mesh_name(name) || (family != AF_INET && family != AF_INET6) || resolve(name, &ip)) {
        return false;
    }
    *found = NULL;
    *error = 0;
    if (family == AF_INET6) {  // a mesh name has no IPv6 address
        *h_error = NO_DATA;
        return true;
    }
    uint32_t v4 = htonl(ip);
    *error = fill_hostent(host, name, AF_INET, &v4, 4, buffer, size);
    *h_error = *error ? NETDB_INTERNAL : NETDB_SUCCESS;
    if (!*error) *found = host;
    return true;
}

SHIM_EXPORT struct hostent *gethostbyname2(const char *name, int family) {
    struct hostent *found;
    int error;
    if (!by_name(name, family, &static_host.host, static_host.buffer, sizeof static_host.buffer, &found, &h_errno,
                 &error)) {
        return real.gethostbyname2(name, family);
    }
    return found;
}

SHIM_EXPORT struct hostent *gethostbyname(const char *name) {
    struct hostent *found;
    int error;
    if (!by_name(name, AF_INET, &static_host.host, static_host.buffer, sizeof static_host.buffer, &found, &h_errno,
                 &error)) {
        return real.gethostbyname(name);
    }
    return found;
}

SHIM_EXPORT int gethostbyname2_r(const char *name, int family, struct hostent *host, char *buffer, size_t size,
                                 struct hostent **result, int *h_error) {
    int error;
    if (!by_name(name, family, host, buffer, size, result, h_error, &error)) {
        return real.gethostbyname2_r(name, family, host, buffer, size, result, h_error);
    }
    return error;
}

SHIM_EXPORT int gethostbyname_r(const char *name, struct hostent *host, char *buffer, size_t size,
                                struct hostent **result, int *h_error) {
    int error;
    if (!by_name(name, AF_INET, host, buffer, size, result, h_error, &error)) {
        return real.gethostbyname_r(name, host, buffer, size, result, h_error);
    }
    return error;
}

// gethostbyaddr(_r) for a mesh address the node knows; false lets the real resolver answer.
static bool by_address(const void *addr, socklen_t len, int type, struct hostent *host, char *buffer, size_t size,
                       struct hostent **found, int *h_error, int *error) {
    uint32_t ip;
    char name[HOST_NAME_MAX + 1];
    if (!shim_enabled() || !mesh_address_bytes(addr, len, type, &ip) || reverse(ip, name, sizeof name)) {
        return false;
    }
    *error = fill_hostent(host, name, type, addr, (int)len, buffer, size);
    *h_error = *error ? NETDB_INTERNAL : NETDB_SUCCESS;
    *found = *error ? NULL : host;
    return true;
}

SHIM_EXPORT struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type) {
    struct hostent *found;
    int error;
    if (!by_address(addr, len, type, &static_host.host, static_host.buffer, sizeof static_host.buffer, &found,
                    &h_errno, &error)) {
        return real.gethostbyaddr(addr, len, type);
    }
    return found;
}

SHIM_EXPORT int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *host, char *buffer,
                                size_t size, struct hostent **result, int *h_error) {
    int error;
    if (!by_address(addr, len, type, host, buffer, size, result, h_error, &error)) {
        return real.gethostbyaddr_r(addr, len, type, host, buffer, size, result, h_error);
    }
    return error;
}

SHIM_EXPORT int getnameinfo(const struct sockaddr *addr, socklen_t addr_len, char *host, socklen_t host_len,
                            char *service, socklen_t service_len, int flags) {
    uint32_t ip;
    uint16_t port;
    char name[HOST_NAME_MAX + 1];
    if (!shim_enabled() || !host || !host_len || (flags & NI_NUMERICHOST) ||
        !shim_mesh_sockaddr(addr, addr_len, &ip, &port) || reverse(ip, name, sizeof name)) {
        return real.getnameinfo(addr, addr_len, host, host_len, service, service_len, flags);
    }
    if (strlen(name) >= host_len) return EAI_OVERFLOW;
    if (service && service_len) {
        int rc = real.getnameinfo(addr, addr_len, NULL, 0, service, service_len, flags);
        if (rc) return rc;
    }
    strcpy(host, name);
    return 0;
}

SHIM_EXPORT int gethostname(char *name, size_t len) {
    if (!shim_enabled() || !shim_cfg.mesh_name[0]) return real.gethostname(name, len);
    size_t need = strlen(shim_cfg.mesh_name) + 1;
    if (!name) {
        errno = EFAULT;
        return -1;
    }
    memcpy(name, shim_cfg.mesh_name, need <= len ? need : len);
    if (need > len) {  // as glibc: truncated, and an error
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

SHIM_EXPORT int uname(struct utsname *buf) {
    shim_enabled();
    int rc = real.uname(buf);
    if (rc == 0 && shim_cfg.active && shim_cfg.mesh_name[0]) {
        snprintf(buf->nodename, sizeof buf->nodename, "%s", shim_cfg.mesh_name);
    }
    return rc;
}
