import Glibc
import ZeroMQ

/// The fixed-size messages two nodes exchange on a direct link before an app gets it — the link proof, a spare
/// link's offer, claim and answer: sent whole, and read exactly, so the apps' first bytes stay in the socket.
/// Blocking: run on the ``BlockingPool``.
enum FixedMessage {
    /// Sends all of `bytes` (a few dozen: the socket's buffer takes them at once) or throws.
    static func send(_ bytes: [UInt8], on fd: Int32, _ what: String) throws(SocketError) {
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == bytes.count else {
            throw sent < 0 ? SocketError.lastError("cannot send the \(what)") : SocketError(EIO, "the \(what) did not fit the socket")
        }
    }

    /// Reads exactly `count` bytes by `deadline`: ETIMEDOUT when they do not come, ECONNRESET when the peer closes.
    static func receive(_ count: Int, from fd: Int32, until deadline: ContinuousClock.Instant, _ what: String) throws(SocketError)
        -> [UInt8]
    {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { throw SocketError(ETIMEDOUT, "the peer sent no \(what) in time") }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, remaining.pollTimeout) > 0 else { continue }
            let got = bytes.withUnsafeMutableBytes {
                recv(fd, $0.baseAddress! + received, count - received, Int32(MSG_DONTWAIT))
            }
            if got == 0 { throw SocketError(ECONNRESET, "the peer closed before sending its \(what)") }
            if got < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw SocketError.lastError("reading the \(what) failed")
            }
            received += got
        }
        return bytes
    }
}
