// Mesh addresses (IPv4, host byte order, as in the protocol) <-> socket addresses, AF_INET or v4-mapped AF_INET6.
#include "shim.h"

#include <arpa/inet.h>
#include <string.h>

bool shim_in_subnet(uint32_t ip) {
    return (ip & shim_cfg.netmask) == shim_cfg.subnet;
}

bool shim_sockaddr_ipv4(const struct sockaddr *addr, socklen_t len, uint32_t *ip, uint16_t *port) {
    if (!addr || len < (socklen_t)sizeof(sa_family_t)) return false;
    // Copies: the app's buffer need not be aligned for the struct.
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in;
        memcpy(&in, addr, sizeof in);
        *ip = ntohl(in.sin_addr.s_addr);
        *port = ntohs(in.sin_port);
        return true;
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (!IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) return false;
        uint32_t v4;
        memcpy(&v4, &in6.sin6_addr.s6_addr[12], sizeof v4);
        *ip = ntohl(v4);
        *port = ntohs(in6.sin6_port);
        return true;
    }
    return false;
}

bool shim_mesh_sockaddr(const struct sockaddr *addr, socklen_t len, uint32_t *ip, uint16_t *port) {
    return shim_sockaddr_ipv4(addr, len, ip, port) && shim_in_subnet(*ip);
}

socklen_t shim_make_sockaddr(int family, uint32_t ip, uint16_t port, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        in6->sin6_addr.s6_addr[10] = 0xff;
        in6->sin6_addr.s6_addr[11] = 0xff;
        uint32_t v4 = htonl(ip);
        memcpy(&in6->sin6_addr.s6_addr[12], &v4, sizeof v4);
        return sizeof *in6;
    }
    struct sockaddr_in *in = (struct sockaddr_in *)out;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    in->sin_addr.s_addr = htonl(ip);
    return sizeof *in;
}

void shim_copy_sockaddr(const struct sockaddr_storage *from, socklen_t from_len, struct sockaddr *to,
                        socklen_t *to_len) {
    if (!to || !to_len) return;
    memcpy(to, from, *to_len < from_len ? *to_len : from_len);
    *to_len = from_len;
}

const char *shim_ip_string(uint32_t ip, char buf[INET_ADDRSTRLEN]) {
    struct in_addr addr = {.s_addr = htonl(ip)};
    return inet_ntop(AF_INET, &addr, buf, INET_ADDRSTRLEN);
}
