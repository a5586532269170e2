import Foundation
import Logging
import MeshBroker
import MeshNode
import Synchronization
import WireFormat
import ZeroMQ

/// A real control plane on loopback with ephemeral ports, for the length of one test.
struct TestBroker {
    let endpoints: BoundEndpoints
    let secret: MeshSecret

    static let secret = MeshSecret(Array("correct horse battery staple".utf8))

    static func with<T: Sendable>(
        secret: MeshSecret = TestBroker.secret, expiry: Duration = .seconds(2), heartbeat: Duration = .milliseconds(200),
        _ body: (TestBroker) async throws -> T
    ) async throws -> T {
        var configuration = BrokerConfiguration(secret: secret)
        configuration.controlEndpoint = "tcp://127.0.0.1:*"
        configuration.tapEndpoint = "tcp://127.0.0.1:*"
        configuration.expiry = expiry
        configuration.heartbeatInterval = heartbeat
        configuration.subnet = try IPv4Subnet("100.64.0.0/24")
        let (ready, readyContinuation) = AsyncStream<BoundEndpoints>.makeStream()
        var logger = Logger(label: "test-broker")
        logger.logLevel = .warning
        let plane = ControlPlane(configuration: configuration, logger: logger) { readyContinuation.yield($0) }
        let task = Task { try await plane.run() }
        defer { task.cancel() }
        var iterator = ready.makeAsyncIterator()
        guard let endpoints = await iterator.next() else { throw CancellationError() }
        return try await body(TestBroker(endpoints: endpoints, secret: secret))
    }

    var controlPort: UInt16 { UInt16(endpoints.control.split(separator: ":").last!)! }
    var tapPort: UInt16 { UInt16(endpoints.tap.split(separator: ":").last!)! }

    /// Joins as `name` (nil: a client tool; with `prefix`, the broker completes it) and runs `body` with the open
    /// session; leaves afterwards.
    @discardableResult
    func session<T: Sendable>(
        _ name: String?, mesh: String = "test", prefix: Bool = false, secret: MeshSecret? = nil,
        _ body: (MeshSession) async throws -> T
    ) async throws -> T {
        let join = JoinRequest(mesh: mesh, nodeName: name, nameIsPrefix: prefix, secret: secret ?? self.secret)
        return try await MeshSession.withSession(
            join, broker: BrokerAddress(host: "127.0.0.1", controlPort: controlPort), connectTimeout: .seconds(5),
            logger: Logger(label: "test-node"), body)
    }

    /// Opens a session without heartbeats or leave, so that its broker-side state outlives the call.
    func abandonedSession(_ name: String, mesh: String = "test") async throws -> Member {
        let join = JoinRequest(mesh: mesh, nodeName: name, secret: secret)
        return try await ControlClient.withConnection(to: endpoints.control) { client in
            try await MeshSession.open(join, client: client, connectTimeout: .seconds(5), logger: Logger(label: "test-node"))
                .welcome.self_p
        }
    }
}

/// Raw TCP bytes to a loopback port, for bad-input tests.
func sendRawTCP(_ bytes: [UInt8], toPort port: UInt16) throws {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECONNREFUSED) }
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    usleep(50_000)
}

/// A real tap subscriber recording one mesh's events for the length of a test.
final class TapRecorder: Sendable {
    private let recorded = Mutex<[TapEvent]>([])
    private let task = Mutex<Task<Void, Error>?>(nil)
    private let subscribed = Mutex(false)

    /// Subscribes, and returns once the broker answered the subscription: from then on nothing is missed.
    init(_ broker: TestBroker, mesh: String = "test") async throws {
        let key = TapKey(secret: broker.secret, mesh: mesh)
        let endpoint = broker.endpoints.tap
        task.withLock {
            $0 = Task { [self] in
                try await TapSubscriber.run(
                    endpoint: endpoint, key: key, onSubscribed: { self.subscribed.withLock { $0 = true } },
                    onEvent: { event in
                        self.recorded.withLock { $0.append(event) }
                        return true
                    })
            }
        }
        guard await eventually(timeout: .seconds(10), { subscribed.withLock { $0 } }) else {
            stop()
            throw FixtureFailure("the broker did not answer the tap's subscription within 10 s")
        }
    }

    var events: [TapEvent] { recorded.withLock { $0 } }

    func stop() { task.withLock { $0?.cancel() } }
}

extension ZMQSocket {
    /// Receives on the caller's thread until the broker answered this SUB socket's subscription to `topic` (an
    /// empty message on that topic); what came before is dropped. Fails after `timeout`.
    func waitForSubscriptionAnswer(_ topic: [UInt8], timeout: Duration = .seconds(10)) throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let frames = try receive() {
                if frames == [topic, []] { return }
            } else {
                usleep(1000)
            }
        }
        throw FixtureFailure("the broker did not answer the subscription within \(timeout)")
    }
}
