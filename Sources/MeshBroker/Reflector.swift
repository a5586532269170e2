import FoundationEssentials
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import WireFormat
import ZeroMQ

/// What the STUN reflector listens on and how much it tolerates.
public struct ReflectorConfiguration: Sendable {
    /// The IP address to listen on: `0.0.0.0` (every IPv4 address), `::` (IPv6 and IPv4), or one address.
    public var host: String = "0.0.0.0"
    /// The port for both UDP and TCP; 0 asks the system for a free one (see ``ReflectorPorts``).
    public var port: UInt16 = 3478
    /// Answer Binding requests over UDP.
    public var udp = true
    /// Answer Binding requests over TCP (RFC 8489 framing: messages back to back on one connection).
    public var tcp = true
    /// At most this many TCP connections at once; a new one beyond it evicts the longest-idle one.
    public var maximumTCPConnections = 256
    /// A TCP connection with no complete request for this long is closed.
    public var idleTimeout: Duration = .seconds(5)
    /// The SOFTWARE attribute of every answer.
    public var software = "boxer-mesh"

    /// The defaults: `0.0.0.0:3478`, UDP and TCP.
    public init() {}

    /// A configuration for `host:port`, UDP and TCP.
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }
}

/// The ports the reflector actually bound (the system picks them when the configured port is 0).
public struct ReflectorPorts: Sendable, Hashable {
    /// The UDP port, or nil if UDP is off.
    public var udp: UInt16?
    /// The TCP port, or nil if TCP is off.
    public var tcp: UInt16?
}

/// Why the reflector could not start, e.g. `reflector cannot bind UDP 0.0.0.0:3478: Address already in use`.
public struct ReflectorError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable {
        private let name: String
        /// A socket could not be created, bound or put into listening state.
        public static let cannotBind = Code(name: "cannotBind")
        /// The configured host is not an IP address.
        public static let badHost = Code(name: "badHost")
        /// No thread or wake-up pipe could be created.
        public static let noResources = Code(name: "noResources")
    }

    /// UDP or TCP.
    public enum Transport: String, Sendable {
        case udp = "UDP"
        case tcp = "TCP"
    }

    /// The kind of failure.
    public var code: Code
    /// The whole message.
    public var description: String

    init(_ code: Code, _ transport: Transport, _ endpoint: Endpoint, errno: Int32, component: String = "reflector") {
        self.code = code
        self.description =
            "\(component) cannot bind \(transport.rawValue) \(endpoint): \(ReflectorSocket.describe(errno: errno))"
    }

    init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}

/// The broker's STUN reflector: answers Binding requests (RFC 8489, and RFC 3489 clients) over UDP and TCP with the
/// address and port the request came from, so that nodes behind NATs learn their public endpoint.
///
/// Sockets are plain non-blocking POSIX sockets served by one dedicated thread in `poll()`; nothing blocks Swift's
/// cooperative pool. ``run()`` returns (and the ports are closed) when its task is cancelled or the service group
/// shuts down gracefully. Bad input is dropped, counted, and logged at most a few lines per second.
public struct Reflector: Service {
    let configuration: ReflectorConfiguration
    let logger: Logger
    let onReady: @Sendable (ReflectorPorts) -> Void

    /// A reflector that calls `onReady` with the bound ports once it is serving.
    public init(
        configuration: ReflectorConfiguration = ReflectorConfiguration(),
        logger: Logger,
        onReady: @escaping @Sendable (ReflectorPorts) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.onReady = onReady
    }

    /// Binds the sockets (throwing ``ReflectorError`` if that fails), serves until cancelled or shut down
    /// gracefully, then closes every socket before returning.
    public func run() async throws {
        let sockets = try bindSockets()
        let wake: ReflectorWake
        do {
            wake = try ReflectorWake()
        } catch {
            sockets.closeAll()
            throw error
        }
        let ports = ReflectorPorts(
            udp: sockets.udp.flatMap { Endpoint.local(of: $0)?.port },
            tcp: sockets.tcp.flatMap { Endpoint.local(of: $0)?.port })
        logger.notice(
            "STUN reflector serving",
            metadata: [
                "host": "\(configuration.host)", "udp": "\(ports.udp.map(String.init) ?? "off")",
                "tcp": "\(ports.tcp.map(String.init) ?? "off")",
            ])
        let (configuration, logger, onReady) = (configuration, logger, onReady)
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    startThread(named: "stun-reflector") {
                        let loop = ReflectorLoop(
                            sockets: sockets, wake: wake, configuration: configuration, logger: logger)
                        onReady(ports)
                        loop.run()
                        loop.closeAll()
                        continuation.resume()
                    }
                }
            } onGracefulShutdown: {
                wake.stop()
            }
        } onCancel: {
            wake.stop()
        }
        logger.notice("STUN reflector stopped")
    }

    /// Opens the configured sockets. When the port is 0, both share one: TCP takes the port UDP got, and where
    /// something holds that one for TCP, UDP takes another (a few times, then they part).
    private func bindSockets() throws -> ReflectorSockets {
        guard let host = IPAddress(configuration.host) else {
            throw ReflectorError(.badHost, "reflector cannot bind: '\(configuration.host)' is not an IP address")
        }
        var sockets = ReflectorSockets()
        do {
            for attempt in 1...Self.sharedPortTries {
                if configuration.udp {
                    sockets.udp = try ReflectorSocket.bind(.udp, Endpoint(host: host, port: configuration.port))
                }
                guard configuration.tcp else { break }
                let udpPort = sockets.udp.flatMap { Endpoint.local(of: $0)?.port }
                if configuration.port == 0, let udpPort,
                    let fd = try? ReflectorSocket.bind(.tcp, Endpoint(host: host, port: udpPort))
                {
                    sockets.tcp = fd
                } else if configuration.port == 0, udpPort != nil, attempt < Self.sharedPortTries {
                    sockets.closeAll()
                    sockets = ReflectorSockets()
                    continue
                } else {
                    sockets.tcp = try ReflectorSocket.bind(.tcp, Endpoint(host: host, port: configuration.port))
                }
                break
            }
        } catch {
            sockets.closeAll()
            throw error
        }
        return sockets
    }

    /// Ports UDP takes with port 0 before TCP gives up sharing one with it.
    static let sharedPortTries = 8
}

/// The reflector's listening sockets (file descriptors).
struct ReflectorSockets: Sendable {
    var udp: Int32?
    var tcp: Int32?

    func closeAll() {
        if let udp { Glibc.close(udp) }
        if let tcp { Glibc.close(tcp) }
    }
}

/// Stops the reflector thread from any thread: sets a flag and wakes the pipe the thread polls.
final class ReflectorWake: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let pipe: WakePipe

    init() throws {
        do {
            pipe = try WakePipe()
        } catch {
            throw ReflectorError(.noResources, "reflector \(error)")
        }
    }

    /// Polled by the loop thread.
    var readEnd: Int32 { pipe.readEnd }

    /// Whether ``stop()`` was called.
    var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Asks the loop to end; safe to call any number of times from any thread.
    func stop() {
        stopping.store(true, ordering: .releasing)
        pipe.wake()
    }

    /// Empties the pipe (called by the loop thread when it is readable).
    func drain() { pipe.drain() }
}
