import Glibc
import WireFormat
import ZeroMQ

/// A node's end of a spliced connection (the schema's Relay, 6.): a TCP connection to the broker's splice port
/// that says which end of which relayed connection it is. Blocking: run on the ``BlockingPool``.
enum SpliceDial {
    /// Connects to `broker`, sends `hello`, and proves the link token to the peer through the broker's splice
    /// once the broker joined the two ends; returns the socket.
    static func dial(
        _ broker: Endpoint, hello: SpliceHello, proving proof: DirectPath.Proof, until deadline: ContinuousClock.Instant
    ) throws -> Int32 {
        let socket = try DialSocket(server: broker, transport: .tcp, localPort: nil, reuse: false)
        do {
            try socket.connect(deadline: deadline, timeout: ContinuousClock.now.duration(to: deadline))
            LinkLiveness.apply(to: socket.fd)
            try FixedMessage.send(hello.bytes, on: socket.fd, "splice hello")
            try Puncher.verify(socket.fd, proof, until: deadline)
        } catch {
            socket.close()
            throw error
        }
        return socket.fd
    }
}
