import CZeroMQ
import Glibc

/// One libzmq message (one frame of a multipart message), owned. Relayed data travels in these so that its bytes
/// are not copied on their way through the process: a received message is read where libzmq put it and sent on
/// as it is (``ZMQSocket/send(_:dontWait:)``), and a node builds outgoing data in a buffer that libzmq takes over.
/// Not thread-safe, like ``ZMQSocket``; a ``copy()`` shares the bytes of a large message (libzmq counts references
/// atomically), so a copy may outlive the original on the same thread while libzmq's I/O thread sends the other.
public final class ZMQMessage {
    /// zmq_msg_t keeps small messages inside the struct, so it must live at a fixed heap address.
    let raw: UnsafeMutablePointer<zmq_msg_t>

    /// An empty message, for receiving into.
    init() {
        raw = .allocate(capacity: 1)
        zmq_msg_init(raw)
    }

    /// A message holding a copy of `bytes` (small frames: control messages, routing ids).
    public convenience init(_ bytes: some Collection<UInt8>) {
        self.init(size: bytes.count)
        let destination = UnsafeMutableRawBufferPointer(start: zmq_msg_data(raw), count: bytes.count)
        destination.copyBytes(from: bytes)
    }

    /// A message of `size` bytes, uninitialized (fill them through ``mutableBytes``).
    public init(size: Int) {
        raw = .allocate(capacity: 1)
        // Fails only when out of memory (ENOMEM), as Array's allocation would.
        precondition(zmq_msg_init_size(raw, size) == 0, "zmq_msg_init_size(\(size)): out of memory")
    }

    /// Takes over `block` (from malloc) without copying: the message is the `count` bytes at `offset` in it, and
    /// libzmq frees the block when the last copy of the message is gone (possibly on its I/O thread).
    public init(taking block: UnsafeMutableRawPointer, offset: Int, count: Int) {
        raw = .allocate(capacity: 1)
        let freed = zmq_msg_init_data(raw, block + offset, count, { _, hint in free(hint) }, block)
        precondition(freed == 0, "zmq_msg_init_data: out of memory")
    }

    deinit {
        zmq_msg_close(raw)
        raw.deallocate()
    }

    /// The message's bytes, valid while the message lives and is not sent.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: zmq_msg_data(raw), count: zmq_msg_size(raw))
    }

    public var mutableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: zmq_msg_data(raw), count: zmq_msg_size(raw))
    }

    public var count: Int { zmq_msg_size(raw) }

    /// A second message with the same bytes: shared, not copied, for messages too large to live inside
    /// zmq_msg_t (above 33 bytes); copied for the small ones.
    public func copy() -> ZMQMessage {
        let copy = ZMQMessage()
        // Fails only for a message that was never initialized, which this class rules out.
        precondition(zmq_msg_copy(copy.raw, raw) == 0, "zmq_msg_copy failed")
        return copy
    }

    var more: Bool { zmq_msg_more(raw) == 1 }
}
