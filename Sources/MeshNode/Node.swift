import FoundationEssentials
import Glibc
import Logging
import WireFormat

/// Everything `boxer-mesh node` needs.
public struct NodeConfiguration: Sendable {
    public var broker: BrokerAddress
    public var join: JoinRequest
    /// Hold the app until the mesh has this many members (a start barrier).
    public var waitFor: Int?
    /// How long to keep trying to reach the broker before giving up.
    public var connectTimeout: Duration
    /// The app and its arguments.
    public var command: [String]
    /// The preload shim given to the app; nil runs the app without mesh sockets.
    public var shim: String?
    /// How the app's sockets are reached: the preload shim or the seccomp supervisor.
    public var interpose = InterposeMode.auto
    /// Which paths connections take, and how long punching may take.
    public var links = LinkPolicy()
    /// The broker's relay port.
    public var relayPort: UInt16 = 7702
    /// While relayed, upgrade attempts back off up to this interval.
    public var upgradeMaxInterval = Timing.Choice.upgradeMaxInterval
    /// Move relayed connections onto the broker's splice port (the kernel moves their bytes, not the node); such a
    /// connection does not survive a broker restart.
    public var relaySplice = false
    /// How often open connections' counters are sampled for the tap's flow events.
    public var flowInterval = Duration.seconds(5)
    /// Where the app's standard output and error go; nil: the node's own.
    public var appOutput: AppOutput?
    /// When the app must be gone (a function invocation's deadline); nil: no deadline.
    public var deadline: NodeDeadline?
    /// Filled in for the caller as the run goes (name, links, why the node left).
    public var report: NodeReport?

    public init(
        broker: BrokerAddress, join: JoinRequest, waitFor: Int?, connectTimeout: Duration, command: [String],
        shim: String? = Node.bundledShim
    ) {
        self.broker = broker
        self.join = join
        self.waitFor = waitFor
        self.connectTimeout = connectTimeout
        self.command = command
        self.shim = shim
    }
}

/// The function wrapper: join the mesh, run the app with its mesh identity in the environment, relay signals
/// to it, heartbeat while it runs, leave when it ends, and exit with its status.
public enum Node {
    /// Runs the node; returns the exit status the process should end with (the app's, or 128+N when a signal
    /// stopped the node before the app started).
    public static func run(_ configuration: NodeConfiguration, logger: Logger) async throws -> Int32 {
        let signals = SignalRelay()
        defer { signals.stop() }
        return try await ControlClient.withConnection(to: configuration.broker.controlEndpoint) { client in
            // The mesh's names, for the app's lookups: the broker pushes them before its Welcome, so the table takes
            // pushes from the start; the other pushes are handled once the node has its links (below).
            let hosts = HostsFile()  // nil without memfds: lookups then ask the node
            defer { hosts?.close() }
            let names = MeshNames(logger: logger, hosts: hosts)
            client.onPush { _ = names.receive($0) }
            // The first warm endpoint is learned while the node authenticates: the app's first connect may come as
            // soon as it starts.
            let brokerAddress = try configuration.broker.ipv4Address()
            let direct = DirectPath()
            let punches = configuration.links.path != .relay
            let session: MeshSession
            do {
                session = try await untilSignal(signals) {
                    try await NodeDeadline.bounding(configuration.deadline) {
                        try await join(configuration, client: client, names: names, logger: logger) { challenge in
                            guard punches, challenge.stunPort != 0 else { return }
                            direct.use(reflector: Endpoint(brokerAddress, port: UInt16(truncatingIfNeeded: challenge.stunPort)))
                            direct.warmUp()
                        }
                    }
                }
            } catch let interrupted as InterruptedBySignal {
                logger.notice("stopped by signal \(interrupted.signal) before the app started")
                return 128 + interrupted.signal
            }
            let me = session.welcome.self_p
            configuration.report?.joined(as: me)
            direct.use(reflector: Endpoint(brokerAddress, port: UInt16(truncatingIfNeeded: session.welcome.stunPort)))
            var relayOptions = RelayOptions(endpoint: configuration.broker.endpoint(port: configuration.relayPort))
            relayOptions.upgradeMaxInterval = configuration.upgradeMaxInterval
            // A node that forces the relay stays on it (or on the broker's splice).
            relayOptions.upgrade = configuration.links.path != .relay
            if configuration.relaySplice {
                let port = UInt16(truncatingIfNeeded: session.welcome.splicePort)
                if port == 0 {
                    logger.warning(
                        "--relay-splice: the broker has no splice port (--splice-port 0, or it captures payloads); relayed connections stay on its relay")
                }
                relayOptions.splice = port == 0 ? nil : Endpoint(brokerAddress, port: port)
            }
            let flows = try FlowMonitor(
                session: session, interval: configuration.flowInterval, logger: logger, brokerRTT: { direct.brokerRTT })
            flows.start()
            let handoffs = HandoffDesk()
            let relay = RelayClient(options: relayOptions, direct: direct, handoffs: handoffs)
            let links = LinkManager(
                session: session, direct: direct, logger: logger, relay: relay, policy: configuration.links, flows: flows)
            // Before the app starts: its first connect may come at once.
            if links.punches { direct.warmUp() }
            // The relay runs for the node's whole life (it must be attached before a peer relays to us).
            let relayTask = Task {
                do {
                    try await relay.run(
                        session: session, logger: logger, onUpgraded: { id, context, direct in links.upgraded(id, context, direct: direct) },
                        onHandoff: { id, context, event in links.handoff(id, context, event) })
                } catch {
                    logger.error("the relay client stopped: \(error)")
                }
            }
            defer {
                relay.stop()
                relayTask.cancel()
            }
            client.onPush { message in
                if names.receive(message) { return }
                switch message.body {
                case .incomingConnection(let incoming): links.accept(incoming)
                case .connectWithdrawn(let withdrawn): links.withdraw(withdrawn)
                case .handoffTurn(let turn): relay.handoffTurn(turn.connectionID)
                case .memberExpired(let expired):
                    links.forgetSpares(of: expired.member.ipv4)
                    Task { flows.peerExpired(expired.member) }
                default: break
                }
            }
            let local = try LocalService(links: links, session: session, names: names, handoffs: handoffs, logger: logger)
            local.start()
            defer { local.stop() }
            await settle(relay: relay, direct: links.punches ? direct : nil, logger: logger)
            var environment = ProcessInfo.processInfo.environment
            environment["BOXER_MESH"] = configuration.join.mesh
            environment["BOXER_MESH_NAME"] = me.name
            environment["BOXER_MESH_IP"] = me.ipv4.description
            environment["BOXER_MESH_SUBNET"] = session.welcome.subnet
            environment["BOXER_SHIM_SOCKET"] = local.address
            environment[HostsFile.environmentVariable] = hosts?.path
            environment[BrokerAddress.environmentVariable] = configuration.broker.description
            let app: AppProcess
            let supervisor: SeccompSupervisor?
            do throws(LaunchError) {
                (app, supervisor) = try launch(configuration, environment: environment, links: links, names: names, logger: logger)
            } catch {
                logger.error("\(error)")
                configuration.report?.launchFailed(error)
                await session.leave(reason: error.description)
                return error.exitStatus
            }
            defer { supervisor?.stop() }
            signals.onSignal { app.send($0) }
            let status = await withTaskGroup(of: Int32?.self) { group in
                group.addTask { await session.keepAlive(); return nil }
                group.addTask { await links.keepWarm(); return nil }
                group.addTask { await links.dropUnaccepted(); return nil }
                group.addTask { await links.holdSpares(); return nil }
                group.addTask { await links.dropIdleSpares(); return nil }
                group.addTask { await app.waitForExit() }
                group.addTask { await configuration.deadline?.enforce(on: app, logger: logger); return nil }
                var status: Int32 = 0
                for await result in group {
                    if let result {
                        status = result
                        group.cancelAll()
                    }
                }
                return status
            }
            logger.info("app exited with status \(status); leaving the mesh")
            // The app's sockets are closed now: their close events go out before we leave.
            await flows.finish()
            let reason = configuration.deadline.flatMap { $0.stoppedTheApp ? $0.leaveReason : nil } ?? "app exited with status \(status)"
            configuration.report?.left(reason, links: flows.linkCounts)
            await session.leave(reason: reason)
            return status
        }
    }

    private static func join(
        _ configuration: NodeConfiguration, client: ControlClient, names: MeshNames, logger: Logger,
        onChallenge: @escaping @Sendable (Boxermesh_V1_Challenge) -> Void
    ) async throws -> MeshSession {
        let session = try await MeshSession.open(
            configuration.join, client: client, connectTimeout: configuration.connectTimeout, logger: logger, names: names,
            onChallenge: onChallenge)
        let me = session.welcome.self_p
        logger.notice("joined mesh '\(configuration.join.mesh)' as \(me.name) \(me.ipv4)")
        guard let count = configuration.waitFor, count > 1 else { return session }
        logger.notice("waiting for \(count) members in mesh '\(configuration.join.mesh)'")
        // Heartbeats go on while the barrier holds, or the broker would expire us while we wait.
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await session.keepAlive() }
            defer { group.cancelAll() }
            do {
                let members = try await session.waitForMembers(count)
                logger.notice("mesh has \(members.count) members: \(members.map(\.name).joined(separator: ", "))")
            } catch {
                await session.leave(reason: "the app never started (waiting for \(count) members)")
                throw error
            }
            return session
        }
    }

    /// Waits (``Timing/Choice/startupBeforeApp`` at most) until the relay is attached and, where the node punches,
    /// the first warm endpoint is learned, so that this work does not share the app's first CPU period with its
    /// first connect.
    private static func settle(relay: RelayClient, direct: DirectPath?, logger: Logger) async {
        let deadline = ContinuousClock.now + Timing.Choice.startupBeforeApp
        let attached = await relay.attached.wait(timeout: deadline - .now)
        let warm = await direct?.firstWarm.wait(timeout: deadline - .now) ?? true
        if !attached || !warm {
            logger.debug("starting the app before the node's start-up settled", metadata: ["relay": "\(attached)", "warm": "\(warm)"])
        }
    }

    /// Runs `body`, but a relayed signal (INT, TERM, HUP, QUIT) cancels it and throws ``InterruptedBySignal``.
    private static func untilSignal<T: Sendable>(
        _ signals: SignalRelay, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let task = Task { try await body() }
        signals.onSignal { number in
            if SignalRelay.stopping.contains(number) { task.cancel() }
        }
        do {
            return try await task.value
        } catch {
            if let number = signals.lastStopSignal { throw InterruptedBySignal(signal: number) }
            throw error
        }
    }
}

struct InterruptedBySignal: Error {
    let signal: Int32
}
