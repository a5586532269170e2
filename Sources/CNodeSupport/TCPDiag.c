// sock_diag queries for TCP counters (see CNodeSupport.h). netlink is plain C territory: fixed structs and
// attribute walking that Swift would only make longer.
#define _GNU_SOURCE
#include "CNodeSupport.h"

#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

// The kernel's TCP states (include/net/tcp_states.h, not in the uapi headers).
enum { STATE_TIME_WAIT = 6, STATE_LISTEN = 10 };

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

uint64_t boxer_socket_cookie(int fd) {
    uint64_t cookie = 0;
    socklen_t length = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &length) < 0) return 0;
    return cookie;
}

/// Fills `counters` from one inet_diag message; 0 when it is not one.
static int parse_message(const struct nlmsghdr *header, boxer_tcp_counters *counters) {
    if (header->nlmsg_type != SOCK_DIAG_BY_FAMILY || header->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return 0;
    const struct inet_diag_msg *message = NLMSG_DATA(header);
    memset(counters, 0, sizeof *counters);
    counters->cookie = (uint64_t)message->id.idiag_cookie[1] << 32 | message->id.idiag_cookie[0];
    counters->state = message->idiag_state;
    int remaining = (int)(header->nlmsg_len - NLMSG_LENGTH(sizeof *message));
    for (const struct rtattr *attribute = (const struct rtattr *)(message + 1); RTA_OK(attribute, remaining);
         attribute = RTA_NEXT(attribute, remaining)) {
        if (attribute->rta_type != INET_DIAG_INFO) continue;
        // Older kernels send a shorter tcp_info: copy what came, the rest stays 0.
        struct tcp_info info;
        memset(&info, 0, sizeof info);
        size_t size = RTA_PAYLOAD(attribute) < sizeof info ? RTA_PAYLOAD(attribute) : sizeof info;
        memcpy(&info, RTA_DATA(attribute), size);
        counters->bytes_acked = info.tcpi_bytes_acked;
        counters->bytes_received = info.tcpi_bytes_received;
        counters->rtt_us = info.tcpi_rtt;
    }
    return 1;
}

/// What to do with each inet_diag message of a dump or a destroy notice.
typedef void (*diag_visitor)(const struct nlmsghdr *header, void *context);

/// Where counters go: up to `capacity` into `out`, all of them counted.
struct counters_sink {
    boxer_tcp_counters *out;
    int capacity;
    int count;
};

static void store_counters(const struct nlmsghdr *header, void *context) {
    struct counters_sink *sink = context;
    boxer_tcp_counters counters;
    if (!parse_message(header, &counters)) return;
    if (sink->count < sink->capacity) sink->out[sink->count] = counters;
    sink->count++;
}

/// Hands every message in `buffer` to `visit`; sets *done at NLMSG_DONE. Returns 0, or -1 with errno set.
static int parse_batch(const char *buffer, ssize_t length, diag_visitor visit, void *context, int *done) {
    for (const struct nlmsghdr *header = (const struct nlmsghdr *)buffer; NLMSG_OK(header, length);
         header = NLMSG_NEXT(header, length)) {
        if (header->nlmsg_type == NLMSG_DONE) {
            *done = 1;
            return 0;
        }
        if (header->nlmsg_type == NLMSG_ERROR) {
            const struct nlmsgerr *error = NLMSG_DATA(header);
            errno = error->error ? -error->error : EPROTO;
            return -1;
        }
        visit(header, context);
    }
    return 0;
}

/// Dumps the TCP sockets of `family` in `states` (a bit per TCP state), with `extensions` (INET_DIAG_* bits), to
/// `visit`. Returns 0, or -1 with errno set.
static int dump_family(int fd, int family, uint32_t states, uint8_t extensions, diag_visitor visit, void *context) {
    struct {
        struct nlmsghdr header;
        struct inet_diag_req_v2 request;
    } query;
    memset(&query, 0, sizeof query);
    query.header.nlmsg_len = sizeof query;
    query.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    query.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    query.request.sdiag_family = (uint8_t)family;
    query.request.sdiag_protocol = IPPROTO_TCP;
    query.request.idiag_states = states;
    query.request.idiag_ext = extensions;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &query, sizeof query, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return -1;
    char buffer[32768] __attribute__((aligned(8)));
    int done = 0;
    while (!done) {
        ssize_t length = recv(fd, buffer, sizeof buffer, 0);
        if (length < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (length == 0) break;
        if (parse_batch(buffer, length, visit, context, &done) < 0) return -1;
    }
    return 0;
}

/// Dumps both families (IPv4, then IPv6) on a netlink socket of its own. Returns 0, or -1 with errno set.
static int dump_both(uint32_t states, uint8_t extensions, diag_visitor visit, void *context) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -1;
    int result = dump_family(fd, AF_INET, states, extensions, visit, context);
    if (result == 0) result = dump_family(fd, AF_INET6, states, extensions, visit, context);
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}

/// A listener on `port` whose local address a connection to 127.0.0.1 reaches (0.0.0.0, 127.0.0.1, or ::,
/// dual-stack unless IPV6_V6ONLY) sets *found.
struct listener_search {
    uint16_t port;
    int found;
};

static void find_listener(const struct nlmsghdr *header, void *context) {
    struct listener_search *search = context;
    if (header->nlmsg_type != SOCK_DIAG_BY_FAMILY || header->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return;
    const struct inet_diag_msg *message = NLMSG_DATA(header);
    if (message->idiag_state != STATE_LISTEN || ntohs(message->id.idiag_sport) != search->port) return;
    const uint32_t *address = message->id.idiag_src;
    if (message->idiag_family == AF_INET) {
        if (address[0] == htonl(INADDR_ANY) || address[0] == htonl(INADDR_LOOPBACK)) search->found = 1;
    } else if ((address[0] | address[1] | address[2] | address[3]) == 0) {
        search->found = 1;
    }
}

int boxer_tcp_listening(uint16_t port) {
    struct listener_search search = {.port = port, .found = 0};
    if (dump_both(1u << STATE_LISTEN, 0, find_listener, &search) < 0) return -1;
    return search.found;
}

int boxer_tcp_dump(boxer_tcp_counters *out, int capacity) {
    struct counters_sink sink = {.out = out, .capacity = capacity, .count = 0};
    uint32_t states = ~((1u << STATE_LISTEN) | (1u << STATE_TIME_WAIT));
    if (dump_both(states, 1 << (INET_DIAG_INFO - 1), store_counters, &sink) < 0) return -1;
    return sink.count;
}

int boxer_tcp_destroy_listen(void) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_SOCK_DIAG);
    if (fd < 0) return -1;
    struct sockaddr_nl local = {
        .nl_family = AF_NETLINK,
        .nl_groups = (1u << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1u << (SKNLGRP_INET6_TCP_DESTROY - 1)),
    };
    // Many sockets may die at once (an app exiting): a large queue keeps their notices.
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int boxer_tcp_destroy_read(int fd, boxer_tcp_counters *out, int capacity) {
    char buffer[32768] __attribute__((aligned(8)));
    // One datagram holds at most this many notices (each is more than 64 bytes): read one only while it fits.
    const int per_datagram = (int)(sizeof buffer / 64);
    struct counters_sink sink = {.out = out, .capacity = capacity, .count = 0};
    while (capacity - sink.count >= per_datagram) {
        ssize_t length = recv(fd, buffer, sizeof buffer, 0);
        if (length < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return sink.count > 0 ? sink.count : -1;
        }
        int done = 0;
        if (parse_batch(buffer, length, store_counters, &sink, &done) < 0) return sink.count > 0 ? sink.count : -1;
    }
    return sink.count;
}
