import Foundation
import Logging
import WireFormat
import ZeroMQ

/// How this node uses the broker's relay.
public struct RelayOptions: Sendable {
    /// The broker's relay endpoint (ZeroMQ ROUTER).
    public var endpoint: String
    /// The broker's STUN reflector: where an upgrade learns the public endpoint of a fresh port.
    public var reflector: Endpoint
    /// While relayed, keep trying to punch a direct link and move onto it.
    public var upgrade = true
    /// Upgrade attempts start 1 s after the relay opens and back off, doubling, up to this.
    public var upgradeMaxInterval = Duration.seconds(30)
    /// How long one upgrade attempt may punch.
    public var upgradePunchTimeout = Duration.seconds(2)

    public init(endpoint: String, reflector: Endpoint) {
        self.endpoint = endpoint
        self.reflector = reflector
    }
}

/// Commands to the relay pump's thread.
enum RelayCommand: Sendable {
    /// The initiator relays `id`; the continuation gets the app's socket once the broker opened it.
    case open(UInt64, RelayStreamContext, CheckedContinuation<Int32, Error>)
    /// The initiator gave the connection up (no direct path and the relay forbidden): tell the acceptor.
    case giveUp(UInt64, String)
    /// An upgrade thread learnt a fresh port's public endpoint.
    case gathered(UInt64, attempt: UInt32, Result<(port: UInt16, endpoint: Endpoint), LinkError>)
    /// An upgrade thread punched and proved a direct socket, or failed.
    case punched(UInt64, attempt: UInt32, Result<Int32, LinkError>)
    /// The broker stopped answering, or this node joined again after it restarted: relayed connections wait for
    /// the relay and resume there.
    case session(SessionEvent)
}

/// This node's side of the relay: one DEALER to the broker's relay and one thread (``RelayPump``) that pumps
/// every relayed connection between the app's loopback socket and the relay, and later the direct link.
final class RelayClient: Sendable {
    let options: RelayOptions
    private let loop: SocketLoop<RelayCommand>
    private let expectations = RelayExpectations()

    init(options: RelayOptions) {
        self.options = options
        let expectations = expectations
        loop = SocketLoop(name: "relay-pump") { orphans in
            expectations.close(LinkError(code: ENETDOWN, description: "the relay is not running"))
            for command in orphans {
                switch command {
                case .open(_, _, let continuation): continuation.resume(throwing: LinkError(code: ENETDOWN, description: "the relay is not running"))
                case .punched(_, _, .success(let fd)): close(fd)
                default: break
                }
            }
        }
    }

    /// Runs the pump until cancelled. `onUpgraded` hears of each connection that moved to a direct link (with the
    /// direct socket, valid during the call).
    func run(
        session: MeshSession, logger: Logger, onUpgraded: @escaping @Sendable (UInt64, RelayStreamContext, Int32?) -> Void
    ) async throws {
        let (options, loop, expectations) = (options, loop, expectations)
        RelayAllocator.tune()
        session.observe { loop.post(.session($0)) }
        try await loop.run {
            try RelayPump(
                options: options, session: session, logger: logger, expectations: expectations, post: { loop.post($0) },
                onUpgraded: onUpgraded)
        }
    }

    func stop() { loop.stop() }

    /// Opens a relayed connection the control plane signalled (we are its initiator); returns the app's socket.
    func open(_ id: UInt64, context: RelayStreamContext) async throws(LinkError) -> Int32 {
        do {
            return try await withCheckedThrowingContinuation { continuation in
                if !loop.post(.open(id, context, continuation)) {
                    continuation.resume(throwing: LinkError(code: ENETDOWN, description: "the relay is not running"))
                }
            }
        } catch let error as LinkError {
            throw error
        } catch {
            throw LinkError(code: EHOSTUNREACH, description: "\(error)")
        }
    }

    /// Waits for the initiator to relay `id` (we accept it); `deliver` runs on the pump's thread. Call it before
    /// answering the broker: the open that answer causes finds it then.
    func expect(_ id: UInt64, context: RelayStreamContext, deliver: @escaping RelayExpectations.Deliver) {
        expectations.expect(id, .init(context: context, deliver: deliver))
    }

    func unexpect(_ id: UInt64) { expectations.cancel(id) }

    func giveUp(_ id: UInt64, reason: String) { loop.post(.giveUp(id, reason)) }
}
