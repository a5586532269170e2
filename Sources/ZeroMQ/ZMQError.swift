import CZeroMQ

/// A libzmq call failed: which operation, and the errno it reported.
public struct ZMQError: Error, CustomStringConvertible, Sendable {
    /// The libzmq call (and its argument, where that helps), e.g. `bind tcp://0.0.0.0:7700`.
    public var operation: String
    /// The errno value libzmq left behind.
    public var code: Int32

    public init(_ operation: String, code: Int32 = zmq_errno()) {
        self.operation = operation
        self.code = code
    }

    /// The call would have blocked (EAGAIN): no message ready, or a send queue is full.
    public var wouldBlock: Bool { code == EAGAIN }

    public var description: String {
        "\(operation): \(String(cString: zmq_strerror(code)))"
    }
}

@inline(__always)
func check(_ result: Int32, _ operation: @autoclosure () -> String) throws(ZMQError) {
    if result < 0 { throw ZMQError(operation()) }
}
