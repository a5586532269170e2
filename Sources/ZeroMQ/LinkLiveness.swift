import Glibc

/// How a direct link notices a vanished peer and keeps NAT mappings open, with the kernel's own timers. The app
/// holds the socket and the node, unprivileged in a function (no CAP_NET_ADMIN, so no SOCK_DESTROY), cannot end it
/// for the app: the kernel must. Every direct mesh socket gets these before anyone else uses it (``apply(to:)``,
/// from the node's Puncher); the shim replays the app's own settings afterwards, and later ones simply override.
/// Spliced connections get them at both ends of each TCP connection to the broker's splice port: the node's and
/// the broker's, which so ends a pair whose node vanished.
///
/// Bound: an idle link whose peer stops answering is reset after idle + count × interval = 5 s of silence, and the
/// app's recv or send fails with ETIMEDOUT. A peer that vanishes at T0 was last heard at or before T0, and the
/// broker expires it at T0 + 1.5 to 2.1 s (2 s of silence, 500 ms heartbeats), so its peers' apps fail at most
/// ~3.5 s after the expiry. No TCP_USER_TIMEOUT: the kernel applies it to a receive window that stays shut as well,
/// so it would break a live reader that merely pauses (measured here: a 3 s user timeout ended such a connection
/// after 3.4 s).
public enum LinkLiveness {
    /// Silence before the first probe: far below the NAT timeouts for established TCP (cloud NAT gateways ~350 s,
    /// home routers minutes), so an idle link's probes keep its NAT mappings; and short enough that three probes
    /// still end within 5 s.
    public static let idleSeconds: Int32 = 2
    /// Between unanswered probes: one lost probe is not the end.
    static let intervalSeconds: Int32 = 1
    /// Unanswered probes before giving up: 2 + 3 × 1 = 5 s of silence in all.
    static let probeCount: Int32 = 3

    /// Sets keepalive on a direct mesh socket, first probe after `idle` seconds of silence. Best effort: a socket
    /// without it still works.
    public static func apply(to fd: Int32, idle: Int32 = idleSeconds) {
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<Int32>.size))
        for (option, value) in [(TCP_KEEPIDLE, idle), (TCP_KEEPINTVL, intervalSeconds), (TCP_KEEPCNT, probeCount)] {
            var value = value
            _ = setsockopt(fd, Int32(IPPROTO_TCP), option, &value, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// How long ago the kernel last heard from the peer on `fd` (data, or an ACK — of a keepalive probe too); nil
    /// where it cannot say.
    public static func silence(on fd: Int32) -> Duration? {
        var info = tcp_info()
        var size = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &size) == 0 else { return nil }
        return .milliseconds(Int64(min(info.tcpi_last_ack_recv, info.tcpi_last_data_recv)))
    }
}
