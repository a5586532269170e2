import Glibc
import Synchronization
import WireFormat

/// Who takes over each relayed connection's direct socket once it has moved to a direct link: the app process
/// whose preload shim got the connection and said it takes handoffs (see ShimHandoff in the schema). The local
/// service registers takers as it hands relayed connections out; the relay pump offers them the direct socket and
/// hears back through ``answer(_:)``.
final class HandoffDesk: Sendable {
    /// Sends ShimHandoff with the direct socket and the node's end of the app's loopback socket, without waiting.
    typealias Taker = @Sendable (_ id: UInt64, _ direct: Int32, _ pair: Int32) -> HandoffOffer
    typealias Answers = @Sendable (Boxermesh_V1_ShimHandoffResult) -> Void

    private let takers = Mutex<[UInt64: Taker]>([:])
    private let answers = Mutex<Answers?>(nil)

    init() {}

    /// Where the shims' answers go (the relay pump's thread).
    func onAnswer(_ sink: @escaping Answers) { answers.withLock { $0 = sink } }

    func register(_ id: UInt64, taker: @escaping Taker) { takers.withLock { $0[id] = taker } }

    /// The taker's process is gone: an offer still out is answered for it.
    func forget(_ ids: [UInt64], reason: String) {
        let gone = takers.withLock { takers in ids.compactMap { takers.removeValue(forKey: $0) != nil ? $0 : nil } }
        for id in gone {
            answer(.with { $0.connection = id; $0.error = ENOENT; $0.reason = reason })
        }
    }

    /// Offers connection `id`'s direct socket to its taker.
    func offer(_ id: UInt64, direct: Int32, pair: Int32) -> HandoffOffer {
        guard let taker = takers.withLock({ $0[id] }) else { return .noTaker }
        return taker(id, direct, pair)
    }

    /// A shim's answer. A connection taken over has no taker any more.
    func answer(_ result: Boxermesh_V1_ShimHandoffResult) {
        if result.taken { _ = takers.withLock { $0.removeValue(forKey: result.connection) } }
        answers.withLock { $0 }?(result)
    }
}

/// How offering a connection's direct socket to the app went.
enum HandoffOffer: Sendable, Equatable {
    /// The app's shim has the offer; its answer comes through ``HandoffDesk/answer(_:)``.
    case sent
    /// Nobody takes this connection's handoffs: the app speaks none (no preload shim).
    case noTaker
    /// The offer did not reach the shim now (its connection full, or the app going away): a decline.
    case undelivered(String)
}
