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

/// Parses every inet_diag message in `buffer`, storing while there is room and counting all in *count; sets *done
/// at NLMSG_DONE. Returns 0, or -1 with errno set.
static int parse_batch(const char *buffer, ssize_t length, boxer_tcp_counters *out, int capacity, int *count, int *done) {
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
        boxer_tcp_counters counters;
        if (!parse_message(header, &counters)) continue;
        if (*count < capacity) out[*count] = counters;
        (*count)++;
    }
    return 0;
}

static int dump_family(int fd, int family, boxer_tcp_counters *out, int capacity, int *count) {
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
    query.request.idiag_states = ~((1u << STATE_LISTEN) | (1u << STATE_TIME_WAIT));
    query.request.idiag_ext = 1 << (INET_DIAG_INFO - 1);
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
        if (parse_batch(buffer, length, out, capacity, count, &done) < 0) return -1;
    }
    return 0;
}

/// Whether one dumped message is a listener on `port` whose local address a connection to 127.0.0.1 reaches.
static int is_loopback_reachable_listener(const struct nlmsghdr *header, uint16_t port) {
    if (header->nlmsg_type != SOCK_DIAG_BY_FAMILY || header->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return 0;
    const struct inet_diag_msg *message = NLMSG_DATA(header);
    if (message->idiag_state != STATE_LISTEN || ntohs(message->id.idiag_sport) != port) return 0;
    const uint32_t *address = message->id.idiag_src;
    if (message->idiag_family == AF_INET) return address[0] == htonl(INADDR_ANY) || address[0] == htonl(INADDR_LOOPBACK);
    return (address[0] | address[1] | address[2] | address[3]) == 0;  // :: (dual-stack unless IPV6_V6ONLY)
}

int boxer_tcp_listening(uint16_t port) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -1;
    int found = 0, failed = 0;
    int families[] = {AF_INET, AF_INET6};
    for (int index = 0; index < 2 && !found && !failed; index++) {
        struct {
            struct nlmsghdr header;
            struct inet_diag_req_v2 request;
        } query;
        memset(&query, 0, sizeof query);
        query.header.nlmsg_len = sizeof query;
        query.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        query.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        query.request.sdiag_family = (uint8_t)families[index];
        query.request.sdiag_protocol = IPPROTO_TCP;
        query.request.idiag_states = 1u << STATE_LISTEN;
        struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
        if (sendto(fd, &query, sizeof query, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
            failed = 1;
            break;
        }
        char buffer[32768] __attribute__((aligned(8)));
        for (int done = 0; !done;) {
            ssize_t length = recv(fd, buffer, sizeof buffer, 0);
            if (length < 0 && errno == EINTR) continue;
            if (length <= 0) {
                failed = length < 0;
                break;
            }
            for (const struct nlmsghdr *header = (const struct nlmsghdr *)buffer; NLMSG_OK(header, length);
                 header = NLMSG_NEXT(header, length)) {
                if (header->nlmsg_type == NLMSG_DONE) done = 1;
                else if (header->nlmsg_type == NLMSG_ERROR) done = failed = 1;
                else if (is_loopback_reachable_listener(header, port)) found = 1;
            }
        }
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return found ? 1 : failed ? -1 : 0;
}

int boxer_tcp_dump(boxer_tcp_counters *out, int capacity) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -1;
    int count = 0;
    int result = dump_family(fd, AF_INET, out, capacity, &count);
    if (result == 0) result = dump_family(fd, AF_INET6, out, capacity, &count);
    int saved = errno;
    close(fd);
    errno = saved;
    return result < 0 ? -1 : count;
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
    int count = 0;
    while (capacity - count >= per_datagram) {
        ssize_t length = recv(fd, buffer, sizeof buffer, 0);
        if (length < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return count > 0 ? count : -1;
        }
        int done = 0;
        if (parse_batch(buffer, length, out, capacity, &count, &done) < 0) return count > 0 ? count : -1;
    }
    return count;
}
