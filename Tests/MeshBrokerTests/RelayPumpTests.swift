import Foundation
import Logging
import MeshBroker
import Synchronization
import Testing
import WireFormat

@testable import MeshNode

/// Two nodes' link managers with `--path relay` against a real control plane and relay on loopback: the node's
/// pump end to end, with the app's sockets in the test (as the shim would hand them over).
struct RelayedPair {
    let a: Side
    let b: Side

    struct Side {
        let session: MeshSession
        let links: LinkManager
        var address: IPv4Address { session.welcome.self_p.ipv4 }
    }

    static func with<T: Sendable>(
        relay configuration: RelayConfiguration = .init(), _ body: (RelayedPair) async throws -> T
    ) async throws -> T {
        try await RelayTestBroker.with(relay: configuration) { broker in
            try await side(broker, "a") { a in
                try await side(broker, "b") { b in
                    // Both attach to the relay (first hello) before either connects.
                    try await Task.sleep(for: .milliseconds(300))
                    return try await body(RelayedPair(a: a, b: b))
                }
            }
        }
    }

    static func side<T: Sendable>(_ broker: RelayTestBroker, _ name: String, _ body: (Side) async throws -> T) async throws -> T {
        try await ControlClient.withConnection(to: broker.control) { client in
            var logger = Logger(label: "test-\(name)")
            logger.logLevel = .warning
            let session = try await MeshSession.open(
                JoinRequest(mesh: "test", nodeName: name, secret: broker.secret), client: client, connectTimeout: .seconds(5),
                logger: logger)
            var options = RelayOptions(endpoint: broker.relay)
            options.upgrade = false
            let direct = DirectPath(reflector: Endpoint(IPv4Address.loopback, port: 9))
            let relay = RelayClient(options: options, direct: direct, handoffs: HandoffDesk())
            let links = LinkManager(
                session: session, direct: direct, logger: logger, relay: relay, policy: LinkPolicy(path: .relay))
            client.onPush { message in
                if case .incomingConnection(let incoming) = message.body { links.accept(incoming) }
            }
            let pump = Task { try await relay.run(session: session, logger: logger, onUpgraded: { _, _, _ in }, onHandoff: { _, _, _ in }) }
            defer {
                relay.stop()
                pump.cancel()
            }
            return try await body(Side(session: session, links: links))
        }
    }
}

/// A listening socket standing in for the app's: the node's signal connections land here, and `accept` trades
/// one for the mesh connection it announces, as the shim does.
final class AppListener: Sendable {
    let fd: Int32
    let port: UInt16

    init(links: LinkManager) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 64) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        guard ok else {
            close(listener)
            throw FixtureFailure("cannot listen: \(String(cString: strerror(errno)))")
        }
        fd = listener
        port = UInt16(bigEndian: address.sin_port)
        links.listen(on: port)
    }

    deinit { close(fd) }

    /// The next mesh connection's socket.
    func accept(_ links: LinkManager) async throws -> Link {
        let (fd, port) = (fd, port)
        return try await onTestThread {
            var source = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let signal = withUnsafeMutablePointer(to: &source) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(fd, $0, &length) }
            }
            guard signal >= 0 else { throw FixtureFailure("accept failed") }
            defer { close(signal) }
            guard let link = links.take(port: port, signalPort: UInt16(bigEndian: source.sin_port)) else {
                throw FixtureFailure("no link behind the signal connection")
            }
            return link
        }
    }
}

/// Blocking socket helpers for the app's side.
enum AppSocket {
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            offset += sent
        }
    }

    /// Everything until EOF; throws the errno of a failed read (ECONNRESET).
    static func readAll(_ fd: Int32, limit: Int = 1 << 30) throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while result.count < limit {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return result }
            guard count > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            result += buffer[0..<count]
        }
        return result
    }

    static func readExactly(_ fd: Int32, _ count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while result.count < count {
            let read = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - result.count), 0) }
            guard read > 0 else { throw POSIXError(POSIXErrorCode(rawValue: read == 0 ? ECONNRESET : errno) ?? .EIO) }
            result += buffer[0..<read]
        }
        return result
    }

    static func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }
}

@Suite("The node's relay pump, end to end on loopback (--path relay)", .serialized)
struct RelayPumpTests {
    @Test("bytes arrive intact both ways; half-close reaches the far app as EOF after the last byte; mesh addresses are reported")
    func halfClose() async throws {
        try await RelayedPair.with { pair in
            let listener = try AppListener(links: pair.b.links)
            async let accepted = listener.accept(pair.b.links)
            let client = try await pair.a.links.connect(to: pair.b.address, port: listener.port)
            let server = try await accepted
            defer { close(client.fd); close(server.fd) }
            #expect(client.connection.path == "relay" && server.connection.path == "relay")
            #expect(client.connection.peerAddress == pair.b.address.value && server.connection.peerAddress == pair.a.address.value)
            #expect(server.connection.localPort == UInt32(listener.port))
            let up = AppSocket.random(3_000_000, seed: 1)
            let down = AppSocket.random(2_000_000, seed: 2)
            let (clientFD, serverFD) = (client.fd, server.fd)
            // The client sends and shuts down writing; the server reads to EOF, then answers on the same socket.
            try await onTestThread {
                try AppSocket.writeAll(clientFD, up)
                shutdown(clientFD, Int32(SHUT_WR))
            }
            let received = try await onTestThread { try AppSocket.readAll(serverFD) }
            #expect(received == up)
            try await onTestThread {
                try AppSocket.writeAll(serverFD, down)
                shutdown(serverFD, Int32(SHUT_WR))
            }
            let answer = try await onTestThread { try AppSocket.readAll(clientFD) }
            #expect(answer == down)
        }
    }

    @Test("a reset on one side reaches the other app as ECONNRESET")
    func reset() async throws {
        try await RelayedPair.with { pair in
            let listener = try AppListener(links: pair.b.links)
            async let accepted = listener.accept(pair.b.links)
            let client = try await pair.a.links.connect(to: pair.b.address, port: listener.port)
            let server = try await accepted
            defer { close(client.fd) }
            let (clientFD, serverFD) = (client.fd, server.fd)
            try await onTestThread { try AppSocket.writeAll(clientFD, [1, 2, 3]) }
            let first: [UInt8] = try await onTestThread { try AppSocket.readExactly(serverFD, 3) }
            #expect(first == [1, 2, 3])
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(serverFD, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            close(serverFD)
            let failure = await #expect(throws: POSIXError.self) { _ = try await onTestThread { try AppSocket.readAll(clientFD) } }
            #expect(failure?.code == .ECONNRESET)
        }
    }

    @Test("a reader that does not read stops its writer (flow control), holds up no other connection, and then gets every byte")
    func flowControl() async throws {
        var configuration = RelayConfiguration()
        configuration.maximumWindow = 256 << 10
        try await RelayedPair.with(relay: configuration) { pair in
            let listener = try AppListener(links: pair.b.links)
            async let firstAccepted = listener.accept(pair.b.links)
            let stalled = try await pair.a.links.connect(to: pair.b.address, port: listener.port)
            let stalledServer = try await firstAccepted
            defer { close(stalled.fd); close(stalledServer.fd) }
            // Nobody reads the server side: the writer must block at some bound, not fill memory.
            let blockedAfter = try await onTestThread { [fd = stalled.fd] in
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                let chunk = AppSocket.random(65536, seed: 3)
                var written = 0
                var lastProgress = ContinuousClock.now
                while ContinuousClock.now - lastProgress < .milliseconds(700) {
                    // The stream is `chunk` over and over, whatever each send takes.
                    let sent = chunk[(written % chunk.count)...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if sent > 0 {
                        written += sent
                        lastProgress = .now
                    } else {
                        usleep(10_000)
                    }
                    guard written < 256 << 20 else { break }
                }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                return written
            }
            // Kernel socket buffers on the four loopback ends hold some; the relay path holds at most its window.
            #expect(blockedAfter < 64 << 20, "the writer never blocked: \(blockedAfter) bytes")
            // Another connection of the same pair works meanwhile.
            async let secondAccepted = listener.accept(pair.b.links)
            let other = try await pair.a.links.connect(to: pair.b.address, port: listener.port)
            let otherServer = try await secondAccepted
            defer { close(other.fd); close(otherServer.fd) }
            let ping = AppSocket.random(100_000, seed: 4)
            try await onTestThread { [fd = other.fd] in try AppSocket.writeAll(fd, ping) }
            let pong: [UInt8] = try await onTestThread { [fd = otherServer.fd] in try AppSocket.readExactly(fd, ping.count) }
            #expect(pong == ping)
            // Now the stalled reader reads: everything the writer got rid of arrives, in order.
            let drained = try await onTestThread { [fd = stalledServer.fd] in try AppSocket.readExactly(fd, blockedAfter) }
            let chunk = AppSocket.random(65536, seed: 3)
            #expect(drained.count == blockedAfter)
            #expect(drained.indices.allSatisfy { drained[$0] == chunk[$0 % chunk.count] })
        }
    }

    @Test("a heavy flow does not starve a light one: small round trips stay quick while a bulk stream runs")
    func fairness() async throws {
        try await RelayedPair.with { pair in
            let listener = try AppListener(links: pair.b.links)
            async let bulkAccepted = listener.accept(pair.b.links)
            let bulk = try await pair.a.links.connect(to: pair.b.address, port: listener.port)
            let bulkServer = try await bulkAccepted
            async let lightAccepted = listener.accept(pair.b.links)
            let light = try await pair.a.links.connect(to: pair.b.address, port: listener.port)
            let lightServer = try await lightAccepted
            defer { for fd in [bulk.fd, bulkServer.fd, light.fd, lightServer.fd] { close(fd) } }
            let running = Atomic<Bool>(true)
            // Bulk: as fast as both ends go, until told to stop (blocking calls on threads of their own, never on
            // the cooperative pool the nodes' async code needs).
            async let writer: Void = onTestThread { [fd = bulk.fd] in
                let chunk = [UInt8](repeating: 7, count: 1 << 20)
                while running.load(ordering: .relaxed) { try AppSocket.writeAll(fd, chunk) }
                shutdown(fd, Int32(SHUT_WR))
            }
            async let reader = onTestThread { [fd = bulkServer.fd] in
                var total = 0
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    guard count > 0 else { return total }
                    total += count
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            // Light: 30 round trips of 100 bytes (the server echoes), timed.
            let times = try await onTestThread { [client = light.fd, server = lightServer.fd] in
                var times: [Duration] = []
                for index in 0..<30 {
                    let started = ContinuousClock.now
                    try AppSocket.writeAll(client, [UInt8](repeating: UInt8(index), count: 100))
                    try AppSocket.writeAll(server, try AppSocket.readExactly(server, 100))
                    _ = try AppSocket.readExactly(client, 100)
                    times.append(ContinuousClock.now - started)
                }
                return times
            }
            running.store(false, ordering: .relaxed)
            try await writer
            let moved = try await reader
            let median = times.sorted()[times.count / 2]
            print("relay fairness: 100-byte round trip median \(median), max \(times.max()!), while \(moved) bulk bytes moved")
            #expect(median < .milliseconds(100), "\(times)")
            #expect(moved > 10 << 20)
        }
    }

    @Test("many relayed connections at once, opened from both sides")
    func many() async throws {
        try await RelayedPair.with { pair in
            let listenerA = try AppListener(links: pair.a.links)
            let listenerB = try AppListener(links: pair.b.links)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<16 {
                    let (from, to, listener) = index % 2 == 0 ? (pair.a, pair.b, listenerB) : (pair.b, pair.a, listenerA)
                    group.addTask {
                        async let accepted = listener.accept(to.links)
                        let client = try await from.links.connect(to: to.address, port: listener.port)
                        let server = try await accepted
                        defer { close(client.fd); close(server.fd) }
                        let bytes = [UInt8(index)] + AppSocket.random(200_000 + index * 1000, seed: UInt64(index))
                        try await onTestThread { [fd = client.fd] in
                            try AppSocket.writeAll(fd, bytes)
                            shutdown(fd, Int32(SHUT_WR))
                        }
                        // Accepts of one listener may take each other's connections: the first byte says whose.
                        let got = try await onTestThread { [fd = server.fd] in try AppSocket.readAll(fd) }
                        let sender = Int(got.first ?? 255)
                        #expect(got == [UInt8(sender)] + AppSocket.random(200_000 + sender * 1000, seed: UInt64(sender)))
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}
