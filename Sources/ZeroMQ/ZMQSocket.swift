import CZeroMQ
import FoundationEssentials
import Glibc

/// One libzmq socket. Not thread-safe: create it on the thread that uses it (a ``SocketLoop`` thread) and use it
/// only there. Sockets are created with LINGER 0 so closing never blocks.
public final class ZMQSocket {
    /// The socket types boxer-mesh uses.
    public enum Kind: Sendable {
        case router, dealer, subscriber
        /// XPUB: a publisher that also receives its subscribers' subscriptions (first byte 1: subscribe, 0: cancel).
        case publisher

        var raw: Int32 {
            switch self {
            case .router: ZMQ_ROUTER
            case .dealer: ZMQ_DEALER
            case .publisher: ZMQ_XPUB
            case .subscriber: ZMQ_SUB
            }
        }
    }

    let handle: UnsafeMutableRawPointer
    private var isClosed = false
    /// Retains the context so it outlives the socket.
    private let context: ZMQContext

    public init(_ context: ZMQContext, _ kind: Kind) throws(ZMQError) {
        guard let handle = zmq_socket(context.handle, kind.raw) else { throw ZMQError("zmq_socket") }
        self.handle = handle
        self.context = context
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit {
        close()
    }

    public func close() {
        guard !isClosed else { return }
        isClosed = true
        zmq_close(handle)
    }

    public func bind(_ endpoint: String) throws(ZMQError) {
        try check(zmq_bind(handle, endpoint), "bind \(endpoint)")
    }

    public func connect(_ endpoint: String) throws(ZMQError) {
        try check(zmq_connect(handle, endpoint), "connect \(endpoint)")
    }

    /// The endpoint this socket last bound, with a wildcard port resolved (`tcp://127.0.0.1:*` → `…:41234`).
    public var lastEndpoint: String {
        var buffer = [UInt8](repeating: 0, count: 256)
        var size = buffer.count
        guard zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Sends one multipart message. With `dontWait` a full queue throws a ``ZMQError`` whose `wouldBlock` is true.
    public func send(_ frames: [[UInt8]], dontWait: Bool = true) throws(ZMQError) {
        for (index, frame) in frames.enumerated() {
            var flags: Int32 = dontWait ? ZMQ_DONTWAIT : 0
            if index < frames.count - 1 { flags |= ZMQ_SNDMORE }
            let result = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, $0.count, flags) }
            try check(result, "send")
        }
    }

    /// Sends one multipart message of ``ZMQMessage``s without copying their bytes: libzmq takes each over (it is
    /// empty afterwards). With `dontWait` a full queue throws a ``ZMQError`` whose `wouldBlock` is true.
    public func send(_ parts: [ZMQMessage], dontWait: Bool = true) throws(ZMQError) {
        for (index, part) in parts.enumerated() {
            var flags: Int32 = dontWait ? ZMQ_DONTWAIT : 0
            if index < parts.count - 1 { flags |= ZMQ_SNDMORE }
            try check(zmq_msg_send(part.raw, handle, flags), "send")
        }
    }

    /// Receives every message waiting on the socket, handing each to `body`: one poll wake-up drains the socket.
    /// A receive error ends the drain and is thrown.
    public func receiveAll(_ body: ([[UInt8]]) -> Void) throws(ZMQError) {
        while let frames = try receive() { body(frames) }
    }

    /// ``receiveAll(_:)`` without copying: each message's parts as libzmq received them.
    public func receiveAllParts(_ body: ([ZMQMessage]) -> Void) throws(ZMQError) {
        while let parts = try receiveParts() { body(parts) }
    }

    /// Receives one multipart message, or nil when none is waiting.
    public func receive() throws(ZMQError) -> [[UInt8]]? {
        try receiveParts().map { parts in parts.map { [UInt8]($0.bytes) } }
    }

    /// Receives one multipart message as its parts, or nil when none is waiting.
    public func receiveParts() throws(ZMQError) -> [ZMQMessage]? {
        var parts: [ZMQMessage] = []
        repeat {
            let part = ZMQMessage()
            if zmq_msg_recv(part.raw, handle, parts.isEmpty ? ZMQ_DONTWAIT : 0) < 0 {
                let error = ZMQError("receive")
                if error.wouldBlock && parts.isEmpty { return nil }
                throw error
            }
            parts.append(part)
        } while parts[parts.count - 1].more
        return parts
    }
}
