import FoundationEssentials
import Glibc
import Logging
import WireFormat
import ZeroMQ

/// How this node uses the broker's relay.
public struct RelayOptions: Sendable {
    /// The broker's relay endpoint (ZeroMQ ROUTER).
    public var endpoint: String
    /// While relayed, keep trying to punch a direct link and move onto it.
    public var upgrade = true
    /// Upgrade attempts start 1 s after the relay opens and back off, doubling, up to this.
    public var upgradeMaxInterval = Timing.Choice.upgradeMaxInterval
    /// How long one upgrade attempt may punch.
    public var upgradePunchTimeout = Timing.Choice.upgradePunch
    /// The broker's splice port, when this node moves relayed connections there (--relay-splice): after
    /// ``Timing/Choice/punchesBeforeSplice`` failed punches (then in turn with punches), or at once where the node
    /// does not punch.
    public var splice: Endpoint?

    public init(endpoint: String) {
        self.endpoint = endpoint
    }
}

/// Commands to the relay pump's thread.
enum RelayCommand: Sendable {
    /// The initiator relays `id`; `deliver` gets the app's socket once the broker opened it (on the pump's thread).
    case open(UInt64, RelayStreamContext, RelayExpectations.Deliver)
    /// The initiator gave the connection up (no direct path and the relay forbidden): tell the acceptor.
    case giveUp(UInt64, String)
    /// An upgrade learnt a fresh port's public endpoint.
    case gathered(UInt64, attempt: UInt32, Result<DirectPath.PunchPort, SocketError>)
    /// An upgrade punched and proved a direct socket, or failed.
    case punched(UInt64, attempt: UInt32, Result<Int32, SocketError>)
    /// The broker stopped answering, or this node joined again after it restarted: relayed connections wait for
    /// the relay and resume there.
    case session(SessionEvent)
    /// The app's shim answered an offer of a connection's direct socket.
    case handoffAnswered(Boxermesh_V1_ShimHandoffResult)
    /// The connecting side is done with its handoff: ours may go ahead (we accepted the connection).
    case handoffTurn(UInt64)
}

/// This node's side of the relay: one DEALER to the broker's relay and one thread (``RelayLoop``) whose
/// ``RelayPump`` moves every relayed connection between the app's loopback socket and the relay, and later the
/// direct link (``DirectPath`` punches it).
final class RelayClient: Sendable {
    let options: RelayOptions
    private let direct: DirectPath
    private let loop: SocketLoop<RelayCommand>
    private let expectations = RelayExpectations()
    private let handoffs: HandoffDesk
    /// Opens when the node first attached to the broker's relay.
    let attached = Latch()

    init(options: RelayOptions, direct: DirectPath, handoffs: HandoffDesk) {
        self.options = options
        self.direct = direct
        self.handoffs = handoffs
        let expectations = expectations
        loop = SocketLoop(name: "relay-pump") { orphans in
            let stopped = SocketError(ENETDOWN, "the relay is not running")
            expectations.close(stopped)
            for command in orphans {
                switch command {
                case .open(_, _, let deliver): deliver(.failure(stopped))
                case .punched(_, _, .success(let fd)): close(fd)
                default: break
                }
            }
        }
    }

    /// Runs the pump until cancelled. `onUpgraded` hears of each connection that moved to a direct link (with the
    /// direct socket, valid during the call), `onHandoff` how handing its direct socket to the app went.
    func run(
        session: MeshSession, logger: Logger, onUpgraded: @escaping @Sendable (UInt64, RelayStreamContext, Int32?) -> Void,
        onHandoff: @escaping @Sendable (UInt64, RelayStreamContext, HandoffEvent) -> Void
    ) async throws {
        let (options, loop, expectations, direct, handoffs, attached) = (options, loop, expectations, direct, handoffs, attached)
        handoffs.onAnswer { loop.post(.handoffAnswered($0)) }
        RelayAllocator.tune()
        session.observe { loop.post(.session($0)) }
        try await loop.run {
            try RelayLoop(
                options: options, expectations: expectations, logger: logger,
                effects: { send in
                    RelayPumpEffects(
                        send: send,
                        session: { session.welcome.session },
                        gather: { id, attempt in
                            Task {
                                let result: Result<DirectPath.PunchPort, SocketError>
                                do throws(SocketError) { result = .success(try await direct.punchPort()) } catch { result = .failure(error) }
                                loop.post(.gathered(id, attempt: attempt, result))
                            }
                        },
                        punch: { id, attempt, request in
                            Task {
                                let result: Result<Int32, SocketError>
                                do throws(SocketError) {
                                    switch request.route {
                                    case .punch(let port, let peer):
                                        result = .success(
                                            try await direct.punch(
                                                from: port, to: peer, proving: request.proof, until: request.deadline, listening: false))
                                    case .splice(let broker, let hello):
                                        result = .success(
                                            try await direct.blocking { try SpliceDial.dial(broker, hello: hello, proving: request.proof, until: request.deadline) })
                                    }
                                } catch {
                                    result = .failure(error)
                                }
                                if !loop.post(.punched(id, attempt: attempt, result)), case .success(let fd) = result { close(fd) }
                            }
                        },
                        upgraded: onUpgraded,
                        handOff: { id, direct, pair in handoffs.offer(id, direct: direct, pair: pair) },
                        handoff: onHandoff,
                        attached: { attached.open() })
                })
        }
    }

    func stop() { loop.stop() }

    /// Opens a relayed connection the control plane signalled (we are its initiator); returns the app's socket.
    func open(_ id: UInt64, context: RelayStreamContext) async throws(SocketError) -> Int32 {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Int32, SocketError>, Never>) in
            if !loop.post(.open(id, context, { continuation.resume(returning: $0) })) {
                continuation.resume(returning: .failure(SocketError(ENETDOWN, "the relay is not running")))
            }
        }
        return try result.get()
    }

    /// Waits for the initiator to relay `id` (we accept it); `deliver` runs on the pump's thread. Call it before
    /// answering the broker: the open that answer causes finds it then.
    func expect(_ id: UInt64, context: RelayStreamContext, deliver: @escaping RelayExpectations.Deliver) {
        expectations.expect(id, .init(context: context, deliver: deliver))
    }

    func unexpect(_ id: UInt64) { expectations.cancel(id) }

    func giveUp(_ id: UInt64, reason: String) { loop.post(.giveUp(id, reason)) }

    /// The broker's HandoffTurn for connection `id`.
    func handoffTurn(_ id: UInt64) { loop.post(.handoffTurn(id)) }
}
