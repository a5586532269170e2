import CZeroMQ

extension ZMQSocket {
    func setOption(_ option: Int32, _ value: Int32) throws(ZMQError) {
        var value = value
        try check(zmq_setsockopt(handle, option, &value, MemoryLayout<Int32>.size), "setsockopt \(option)")
    }

    func setOption(_ option: Int32, _ value: Int64) throws(ZMQError) {
        var value = value
        try check(zmq_setsockopt(handle, option, &value, MemoryLayout<Int64>.size), "setsockopt \(option)")
    }

    func setOption(_ option: Int32, bytes: [UInt8]) throws(ZMQError) {
        try check(bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, $0.count) }, "setsockopt \(option)")
    }

    /// Messages larger than this make libzmq drop the sending peer's connection (bad-input protection).
    public func setMaxMessageSize(_ bytes: Int64) throws(ZMQError) { try setOption(ZMQ_MAXMSGSIZE, bytes) }

    /// Queue limits per peer. PUB drops for a subscriber past its limit; that is what keeps a slow tap harmless.
    public func setHighWaterMarks(send: Int32, receive: Int32) throws(ZMQError) {
        try setOption(ZMQ_SNDHWM, send)
        try setOption(ZMQ_RCVHWM, receive)
    }

    /// ROUTER: fail with EHOSTUNREACH instead of dropping silently when a peer is gone or full.
    public func setRouterMandatory(_ on: Bool) throws(ZMQError) { try setOption(ZMQ_ROUTER_MANDATORY, Int32(on ? 1 : 0)) }

    /// XPUB: pass every subscription up, also one that another subscriber already made.
    public func setPassEverySubscription(_ on: Bool) throws(ZMQError) { try setOption(ZMQ_XPUB_VERBOSE, Int32(on ? 1 : 0)) }

    /// SUB: receive messages whose topic frame starts with `prefix` (empty: everything).
    public func subscribe(_ prefix: [UInt8]) throws(ZMQError) { try setOption(ZMQ_SUBSCRIBE, bytes: prefix) }

    /// ZMTP heartbeats so a dead TCP peer is noticed even when no application message is due.
    public func setHeartbeat(intervalMs: Int32, timeoutMs: Int32) throws(ZMQError) {
        try setOption(ZMQ_HEARTBEAT_IVL, intervalMs)
        try setOption(ZMQ_HEARTBEAT_TIMEOUT, timeoutMs)
    }
}
