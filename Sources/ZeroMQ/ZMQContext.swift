import CZeroMQ

/// A libzmq context. Thread-safe (libzmq guarantees it), so one context serves every socket of a process.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init() throws(ZMQError) {
        guard let handle = zmq_ctx_new() else { throw ZMQError("zmq_ctx_new") }
        self.handle = handle
    }

    /// zmq_ctx_term blocks until every socket is closed; sockets here use LINGER 0, so that is prompt.
    deinit { zmq_ctx_term(handle) }
}
