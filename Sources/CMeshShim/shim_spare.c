// Spare links the node lent this process (the schema's ShimSpare): proven direct links to a peer, held here so
// that the app's next connect to that peer takes one without asking the node — no node thread, no hop. The shim
// claims one only where the node would have claimed it without an answer: the peer took a connection on that port
// lately (ShimConnection.listener_ms), the kernel heard from the peer on the link lately (its keepalive probes),
// and nothing is readable on it. Then it writes the claim, puts the socket at the app's fd and tells the node,
// which does the rest (report, flow, successor) off the app's way. A spare found dead goes back to the node.
//
// The fds are the shim's own, hidden from the app: a close, dup2 or close_range over one forgets it (the node
// hears), and each is checked to be the same socket before use, in case the app closed it where the shim could
// not see. A forked child closes its copies: a link must go to one app only.
#include "shim.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SPARES 32
#define MAX_TRUSTED 64
#define MAX_CLAIM 32

struct spare {
    uint64_t id, lent;  // lent: order of arrival (the newest is taken first: its NAT mappings are the freshest)
    uint32_t peer_ip;
    uint16_t local_port;
    dev_t dev;
    ino_t ino;
    uint32_t fresh_ms;
    size_t claim_len;
    uint8_t claim[MAX_CLAIM];
};

struct trusted {
    uint32_t ip;
    uint16_t port;
    int64_t until_ms;
};

static struct spare spares[MAX_SPARES];
static int spare_fds[MAX_SPARES];  // -1: free; read without the lock by shim_spare_is_fd
static uint64_t lent_count;
static struct trusted trusted[MAX_TRUSTED];

__attribute__((constructor)) static void clear_fds(void) {
    for (int i = 0; i < MAX_SPARES; i++) spare_fds[i] = -1;
}

bool shim_spare_is_fd(int fd) {
    if (fd < 0 || shim_in_vfork_child()) return false;
    for (int i = 0; i < MAX_SPARES; i++) {
        if (__atomic_load_n(&spare_fds[i], __ATOMIC_RELAXED) == fd) return true;
    }
    return false;
}

static void set_fd(int slot, int fd) {
    __atomic_store_n(&spare_fds[slot], fd, __ATOMIC_RELAXED);
}

static bool still_ours(int slot) {
    return shim_fd_is(spare_fds[slot], spares[slot].dev, spares[slot].ino);
}

// Tells the node how spare `id` ended: claimed for `port` (0: given back, for `reason`).
static void report_locked(uint64_t id, uint16_t port, int64_t setup_us, const char *reason) {
    Boxermesh__V1__ShimSpareUsed body = BOXERMESH__V1__SHIM_SPARE_USED__INIT;
    body.spare = id;
    body.port = port;
    body.setup_us = setup_us > 0 ? (uint32_t)setup_us : 0;
    body.reason = (char *)reason;
    Boxermesh__V1__ShimRequest request = BOXERMESH__V1__SHIM_REQUEST__INIT;
    request.body_case = BOXERMESH__V1__SHIM_REQUEST__BODY_SPARE_USED;
    request.spare_used = &body;
    shim_node_notify_locked(&request);
}

// Gives spare `slot` back to the node: our copy is closed unless the app's close takes care of it.
static void give_back_locked(int slot, bool close_it, const char *reason) {
    SHIM_DEBUG("lent spare link %llu (fd %d) goes back to the node: %s", (unsigned long long)spares[slot].id,
               spare_fds[slot], reason);
    if (close_it) real.close(spare_fds[slot]);
    set_fd(slot, -1);
    report_locked(spares[slot].id, 0, 0, reason);
}

void shim_spare_add_locked(const Boxermesh__V1__ShimSpare *spare, int fd) {
    struct stat st;
    int slot = 0;
    while (slot < MAX_SPARES && spare_fds[slot] >= 0) slot++;
    const char *refusal = slot == MAX_SPARES ? "the shim holds as many as it will"
                          : spare->claim.len < 6 || spare->claim.len > MAX_CLAIM ? "its claim is malformed"
                          : fstat(fd, &st) != 0 ? "it is no socket"
                                                 : NULL;
    if (refusal) {
        SHIM_DEBUG("lent spare link %llu refused: %s", (unsigned long long)spare->spare, refusal);
        real.close(fd);
        report_locked(spare->spare, 0, 0, refusal);
        return;
    }
    struct spare *s = &spares[slot];
    s->id = spare->spare;
    s->lent = ++lent_count;
    s->peer_ip = spare->peer_address;
    s->local_port = (uint16_t)spare->local_port;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->fresh_ms = spare->fresh_ms;
    s->claim_len = spare->claim.len;
    memcpy(s->claim, spare->claim.data, spare->claim.len);
    set_fd(slot, fd);
    char peer[INET_ADDRSTRLEN];
    SHIM_DEBUG("lent spare link %llu to %s (fd %d)", (unsigned long long)s->id, shim_ip_string(s->peer_ip, peer), fd);
}

void shim_spare_recall_locked(uint64_t id) {
    for (int slot = 0; slot < MAX_SPARES; slot++) {
        if (spare_fds[slot] >= 0 && spares[slot].id == id) give_back_locked(slot, true, "recalled by the node");
    }
}

void shim_spare_trust_locked(uint32_t ip, uint16_t port, uint32_t listener_ms) {
    if (!listener_ms) return;
    int64_t now = shim_now_ms();
    struct trusted *slot = NULL;
    for (int i = 0; i < MAX_TRUSTED; i++) {
        struct trusted *t = &trusted[i];
        if (t->ip == ip && t->port == port) {
            slot = t;
            break;
        }
        if (!slot || t->until_ms < slot->until_ms) slot = t;  // else the one that runs out first
    }
    *slot = (struct trusted){.ip = ip, .port = port, .until_ms = now + listener_ms};
}

static bool is_trusted(uint32_t ip, uint16_t port) {
    int64_t now = shim_now_ms();
    for (int i = 0; i < MAX_TRUSTED; i++) {
        if (trusted[i].ip == ip && trusted[i].port == port) return trusted[i].until_ms > now;
    }
    return false;
}

// The newest spare lent towards ip, or -1.
static int newest_locked(uint32_t ip) {
    int best = -1;
    for (int slot = 0; slot < MAX_SPARES; slot++) {
        if (spare_fds[slot] >= 0 && spares[slot].peer_ip == ip && (best < 0 || spares[slot].lent > spares[best].lent)) {
            best = slot;
        }
    }
    return best;
}

// Why spare `slot` must not be claimed now, or NULL. Fills *gone when the fd is no longer ours (not to be closed).
static const char *unusable_locked(int slot, bool *gone) {
    int fd = spare_fds[slot];
    if (!still_ours(slot)) {
        *gone = true;
        return "the app closed its fd";
    }
    struct tcp_info info;
    socklen_t len = sizeof info;
    if (real.getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return "no TCP_INFO";
    uint32_t silence = info.tcpi_last_ack_recv < info.tcpi_last_data_recv ? info.tcpi_last_ack_recv
                                                                          : info.tcpi_last_data_recv;
    if (silence > spares[slot].fresh_ms) return "the peer was silent on it too long (its path may have died)";
    // Nothing may be readable on a held spare: that would be the peer's FIN, a reset, or bytes it must not send.
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) != 0) return "the peer closed it";
    return NULL;
}

int shim_spare_claim_locked(uint32_t ip, uint16_t port, uint64_t *id, Boxermesh__V1__ShimConnection *connection) {
    if (shim_in_vfork_child() || !is_trusted(ip, port)) return -1;
    int slot;
    while ((slot = newest_locked(ip)) >= 0) {
        bool gone = false;
        const char *why = unusable_locked(slot, &gone);
        int fd = spare_fds[slot];
        if (!why) {
            uint8_t claim[MAX_CLAIM];
            memcpy(claim, spares[slot].claim, spares[slot].claim_len);
            claim[4] = (uint8_t)(port >> 8);
            claim[5] = (uint8_t)port;
            // Held back (MSG_MORE): it leaves with the app's first bytes, or when the node, told below, lifts the
            // hold. Sent at once, it would cost the connect a segment's way through the NATs, where the kernel
            // carries it inside send().
            ssize_t sent = send(fd, claim, spares[slot].claim_len, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE);
            if (sent == (ssize_t)spares[slot].claim_len) {
                set_fd(slot, -1);
                *id = spares[slot].id;
                connection->local_port = spares[slot].local_port;
                connection->peer_address = ip;
                connection->peer_port = port;
                connection->path = "direct";
                return fd;
            }
            why = "the claim could not be sent";
        }
        give_back_locked(slot, !gone, why);
    }
    return -1;
}

void shim_spare_claimed_locked(uint64_t id, uint16_t port, int64_t setup_us) {
    report_locked(id, port, setup_us, "");
}

void shim_spare_vacate_locked(unsigned int first, unsigned int last) {
    for (int slot = 0; slot < MAX_SPARES; slot++) {
        int fd = spare_fds[slot];
        if (fd >= 0 && (unsigned int)fd >= first && (unsigned int)fd <= last) give_back_locked(slot, false, "the app closed its fd");
    }
}

void shim_spare_drop_all_locked(void) {
    for (int slot = 0; slot < MAX_SPARES; slot++) {
        if (spare_fds[slot] < 0) continue;
        if (still_ours(slot)) real.close(spare_fds[slot]);
        set_fd(slot, -1);
    }
}
