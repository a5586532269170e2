import FoundationEssentials
import Glibc
import Synchronization
import WireFormat

/// The one way this node makes a direct link, for a connect, an accept and an upgrade alike: learn the public
/// endpoint of a fresh local port from the broker's reflector, punch through both NATs from it, and prove the
/// broker's link token on the new socket. The blocking steps run on a ``BlockingPool``; whoever calls decides
/// only when to punch and for how long.
final class DirectPath: Sendable {
    /// A fresh local port and the public endpoint the NAT maps it to: what goes to the peer to punch towards.
    struct PunchPort: Sendable {
        let port: UInt16
        let endpoint: Endpoint
        /// The endpoint was predicted (``sparePunchPort()``), not learned from the reflector.
        var predicted = false

        /// Where the endpoint came from, for the log: "predicted" or "learned".
        var origin: String { predicted ? "predicted" : "learned" }
    }

    /// What each end proves on a new direct socket: it holds the broker's token for this connection, in its role.
    struct Proof: Sendable {
        let token: LinkToken
        let connectionID: UInt64
        let initiator: Bool
        /// Bytes this end sends right after its proof, in the same segment: it then checks the other end's proof
        /// first, so they go to the right node only (a spare link's offer). Empty: both proofs cross at once.
        var answer: [UInt8] = []
    }

    private let pool: BlockingPool
    private let state = Mutex(State())
    /// Opens once the first warm endpoint was learned (or learning it failed).
    let firstWarm = Latch()

    private struct State {
        /// The broker's reflector, once known (the broker names its port while the node authenticates).
        var reflector: Endpoint?
        /// The lowest round trip to the broker seen.
        var brokerRTT: Duration?
        /// A port whose public endpoint was learned ahead of time, and whether one is being learned.
        var warm: (port: PunchPort, learned: ContinuousClock.Instant)?
        var warming = false
        /// Callers waiting for the warm endpoint on its way (it started earlier than they could start one).
        var warmWaiters: [CheckedContinuation<PunchPort?, Never>] = []
        /// The public address of the last endpoints learned, and how many in a row the NAT mapped to the same
        /// address with the local port kept.
        var portsKept: (address: IPAddress, count: Int)?
        /// Ports whose endpoints went to the broker for inbound connections (``advertisedPort()``), newest last.
        var advertised: [PunchPort] = []
    }

    /// Advertised ports kept: the newest and the one before, which the broker may have handed out as the newer
    /// one was on its way.
    static let advertisedKept = 2

    /// Learned endpoints in a row that kept their port before spare links predict theirs.
    static let keptPortsToPredict = 3

    /// Without a `reflector` no endpoint is learned until ``use(reflector:)`` names one.
    init(reflector: Endpoint? = nil, pool: BlockingPool = .shared) {
        self.pool = pool
        state.withLock { $0.reflector = reflector }
    }

    /// Learns endpoints from `reflector` from now on.
    func use(reflector: Endpoint) { state.withLock { $0.reflector = reflector } }

    /// The lowest round trip to the broker measured so far.
    var brokerRTT: Duration? { state.withLock { $0.brokerRTT } }

    // MARK: Endpoints

    /// A fresh local port and its public endpoint: the warm one if it is fresh (another is learned in the
    /// background for the next caller, ``Timing/Choice/relearnDelay`` later), else learned now. Where the NAT keeps
    /// source ports (the NATs punching works through), a warm mapping holds for any destination while the port is
    /// unused.
    func punchPort() async throws(SocketError) -> PunchPort {
        let now = ContinuousClock.now
        enum Ready { case warm(PunchPort), onItsWay, none }
        let ready = state.withLock { state -> Ready in
            defer { state.warm = nil }
            if let warm = state.warm, now - warm.learned < Timing.Choice.warmLifetime { return .warm(warm.port) }
            return state.warming && state.warmWaiters.isEmpty ? .onItsWay : .none
        }
        defer { warmUp(after: Timing.Choice.relearnDelay) }
        switch ready {
        case .warm(let port):
            return port
        case .onItsWay:
            // Right after the node started the first warm endpoint is being learned: waiting for it is quicker
            // than starting over.
            let arrived = await withCheckedContinuation { continuation in
                state.withLock { state in
                    if state.warming { state.warmWaiters.append(continuation) } else { continuation.resume(returning: nil) }
                }
            }
            if let arrived { return arrived }
            return try await learn()
        case .none:
            return try await learn()
        }
    }

    /// A fresh local port for a spare link and its public endpoint: predicted where it can be
    /// (``predictedPunchPort()``), else as ``punchPort()``. A wrong guess costs only a spare, which
    /// ``predictionFailed()`` reports.
    func sparePunchPort() async throws(SocketError) -> PunchPort {
        if let predicted = try predictedPunchPort() { return predicted }
        return try await punchPort()
    }

    /// A fresh local port and, where the NAT kept the local port of the last few endpoints learned (a
    /// port-preserving NAT, the kind punching works through), its endpoint: the same address and port, with no
    /// reflector exchange. Nil where the NAT gave no such promise. Does not block: a spare link's claim asks for one.
    func predictedPunchPort() throws(SocketError) -> PunchPort? {
        let address = state.withLock { state in
            state.portsKept.flatMap { $0.count >= Self.keptPortsToPredict ? $0.address : nil }
        }
        guard let address else { return nil }
        do {
            let port = try Puncher.freeLocalPort()
            return PunchPort(port: port, endpoint: Endpoint(host: address, port: port), predicted: true)
        } catch {
            throw SocketError.wrapping(error)
        }
    }

    /// A fresh local port and its public endpoint, learned from the reflector, kept for an inbound connection:
    /// the node advertises the endpoint to the broker, which hands it to the next node that connects here
    /// (``takeAdvertised(_:)``). Learned, never predicted: a wrong guess would cost a connection its direct path.
    func advertisedPort() async throws(SocketError) -> PunchPort {
        let port = try await learn()
        state.withLock { state in
            state.advertised = Array((state.advertised + [port]).suffix(Self.advertisedKept))
        }
        return port
    }

    /// The port this node advertised `endpoint` for, which the broker has now handed to a connecting node; nil
    /// when no advert of ours had that endpoint.
    func takeAdvertised(_ endpoint: Endpoint) -> PunchPort? {
        state.withLock { state in
            guard let index = state.advertised.lastIndex(where: { $0.endpoint == endpoint }) else { return nil }
            return state.advertised.remove(at: index)
        }
    }

    /// A link punched from a predicted endpoint failed: learn endpoints again before the next prediction.
    func predictionFailed() {
        state.withLock { $0.portsKept = nil }
    }

    /// Learns a warm endpoint in the background, after `delay`, unless one is fresh or on its way by then. Called
    /// after each use, and every half ``Timing/Choice/warmLifetime`` by ``keepWarm()``.
    func warmUp(after delay: Duration = .zero) {
        guard delay == .zero else {
            Task {
                try? await Task.sleep(for: delay)
                warmUp()
            }
            return
        }
        let start = state.withLock { state in
            let fresh = state.warm.map { ContinuousClock.now - $0.learned < Timing.Choice.warmLifetime / 2 } ?? false
            guard !fresh, !state.warming else { return false }
            state.warming = true
            return true
        }
        guard start else { return }
        Task {
            let learned = try? await learn()
            let waiters = state.withLock { state in
                state.warming = false
                defer { state.warmWaiters = [] }
                // A waiting caller takes it; the rest (there is at most one) learn their own.
                if state.warmWaiters.isEmpty { state.warm = learned.map { ($0, ContinuousClock.now) } }
                return state.warmWaiters
            }
            for (index, waiter) in waiters.enumerated() { waiter.resume(returning: index == 0 ? learned : nil) }
            firstWarm.open()
        }
    }

    /// Keeps a warm endpoint ready until cancelled.
    func keepWarm() async {
        while !Task.isCancelled {
            warmUp()
            try? await Task.sleep(for: Timing.Choice.warmLifetime / 2)
        }
    }

    /// A fresh local port and the public endpoint the broker's reflector sees for it over TCP.
    private func learn() async throws(SocketError) -> PunchPort {
        guard let reflector = state.withLock({ $0.reflector }) else {
            throw SocketError(ENETUNREACH, "cannot learn our public endpoint: the broker has not named its reflector yet")
        }
        let (port, elapsed): (PunchPort, Duration)
        do {
            (port, elapsed) = try await pool.run { _ in
                // A free port may still be taken towards the reflector: two learns at once can be given the same
                // free port (it is free again once the probe closes). Another port then works.
                var attempts = 0
                while true {
                    attempts += 1
                    let local = try Puncher.freeLocalPort()
                    let started = ContinuousClock.now
                    do {
                        let mapped = try STUNClient.mappedEndpoint(
                            server: reflector, transport: .tcp, localPort: local, timeout: Timing.Choice.reflector)
                        return (PunchPort(port: local, endpoint: mapped), ContinuousClock.now - started)
                    } catch let error as STUNClientError where error.code == .portTaken && attempts < 3 {
                        continue
                    }
                }
            }
        } catch {
            throw SocketError(ENETUNREACH, "cannot learn our public endpoint from \(reflector): \(error)")
        }
        // A reflector exchange over TCP takes two round trips (handshake, request): keep the fastest seen.
        state.withLock { state in
            state.brokerRTT = min(state.brokerRTT ?? elapsed / 2, elapsed / 2)
            let kept = port.endpoint.port == port.port
            let inARow = state.portsKept.map { $0.address == port.endpoint.host ? $0.count : 0 } ?? 0
            state.portsKept = (port.endpoint.host, kept ? inARow + 1 : 0)
        }
        return port
    }

    // MARK: Punch and prove

    /// Punches from `port` to the peer's public endpoint until `deadline` (or until `abandoned` says so), then
    /// proves `proof` on the new socket — the proof gets ``Timing/Wire/proof`` of its own, so a punch that lands
    /// just before the deadline still counts. With `listening` (the accepting end) the port also listens, so a
    /// peer's plain connect lands where nothing filters. Returns the proven, blocking socket.
    func punch(
        from port: UInt16, to peer: Endpoint, proving proof: Proof, until deadline: ContinuousClock.Instant,
        listening: Bool, abandoned: @escaping @Sendable () -> Bool = { false }
    ) async throws(SocketError) -> Int32 {
        do {
            return try await pool.run { cancellation in
                try Self.punchAndProve(
                    from: port, to: peer, proving: proof, until: deadline, listening: listening,
                    abandoned: { cancellation.isCancelled || abandoned() }
                ) { _, _ in }.fd
            }
        } catch {
            throw SocketError.wrapping(error)
        }
    }

    /// As ``punch(from:to:proving:until:listening:abandoned:)`` for a punch no task waits for (a spare link, an
    /// inbound connection): in the background, then `exchange` on the proven socket with the proof's deadline (a
    /// spare link's offer); `done` gets the outcome on the pool's thread. No task starts or resumes around it: two
    /// thread wake-ups fewer on the node.
    func punch<T: Sendable>(
        from port: UInt16, to peer: Endpoint, proving proof: Proof, until deadline: ContinuousClock.Instant,
        listening: Bool, abandoned: @escaping @Sendable () -> Bool = { false },
        then exchange: @escaping @Sendable (Int32, ContinuousClock.Instant) throws -> T,
        done: @escaping @Sendable (Result<(fd: Int32, exchanged: T), SocketError>) -> Void
    ) {
        pool.start {
            done(Result { () throws(SocketError) in
                do {
                    return try Self.punchAndProve(
                        from: port, to: peer, proving: proof, until: deadline, listening: listening, abandoned: abandoned, then: exchange)
                } catch {
                    throw SocketError.wrapping(error)
                }
            })
        }
    }

    /// The blocking steps of a punch: punch, prove, then `exchange`; the socket is closed if any of them throws.
    private static func punchAndProve<T>(
        from port: UInt16, to peer: Endpoint, proving proof: Proof, until deadline: ContinuousClock.Instant,
        listening: Bool, abandoned: () -> Bool, then exchange: (Int32, ContinuousClock.Instant) throws -> T
    ) throws -> (fd: Int32, exchanged: T) {
        let fd = try Puncher.punch(from: port, to: peer, until: deadline, listening: listening, abandoned: abandoned)
        do {
            let proven = max(deadline, ContinuousClock.now + Timing.Wire.proof)
            try Puncher.verify(fd, proof, until: proven)
            return (fd, try exchange(fd, proven))
        } catch {
            close(fd)
            throw error
        }
    }

    /// Runs other blocking socket work (dialling the app's listener) on the same pool.
    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws(SocketError) -> T {
        do {
            return try await pool.run { _ in try body() }
        } catch {
            throw SocketError.wrapping(error)
        }
    }
}
