import ChildProcess
import Foundation
import Logging
import MeshNode
import ServiceLifecycle
import Synchronization
import Testing
import WireFormat

@testable import MeshBroker

// Real sockets on 127.0.0.1 only. The reflector gets ephemeral ports; clients get ports the system just handed out.

@Suite("STUN reflector and client", .serialized, .timeLimit(.minutes(3)))
struct ReflectorTests {
    // MARK: External clients

    @Test("Debian's STUN client (`stun`, RFC 3489) sees 127.0.0.1 and its own port, and parses the answer cleanly")
    func externalClientUDP() async throws {
        let client = try #require(ExternalSTUNClient.installed, "Debian's stun-client must be installed (scripts/install-deps.sh)")
        try await TestReflector.with { reflector in
            let localPort = try Loopback.freePort(.udp)
            let output = try await Loopback.offPool { try client.run(server: reflector.udpPort, localPort: localPort) }
            let mapped = client.mappedEndpoints(in: output)
            #expect(mapped.contains("127.0.0.1:\(localPort)"), "\(client.path) said:\n\(output)")
            #expect(client.parsedCleanly(output), "\(client.path) had trouble with the answer:\n\(output)")
        }
    }

    // MARK: Our client

    @Test("STUNClient gets back exactly its fixed local port", arguments: [STUNClient.Transport.udp, .tcp])
    func clientFixedPort(transport: STUNClient.Transport) async throws {
        try await TestReflector.with { reflector in
            let localPort = try Loopback.freePort(transport == .udp ? .udp : .tcp)
            let server = reflector.endpoint(transport)
            for _ in 0..<2 {  // the same port again right away: nothing of the first exchange is in the way
                let mapped = try await Loopback.offPool {
                    try STUNClient.mappedEndpoint(
                        server: server, transport: transport, localPort: localPort, timeout: .seconds(5))
                }
                #expect(mapped == Endpoint(IPv4Address.loopback, port: localPort))
            }
            if transport == .tcp {
                // The port can be bound again at once to punch from (what MeshNode does next).
                let fd = try Loopback.bindReusable(port: localPort)
                close(fd)
            }
            // Without a fixed port, the system picks one; the answer still names it.
            let mapped = try await Loopback.offPool {
                try STUNClient.mappedEndpoint(server: server, transport: transport, timeout: .seconds(5))
            }
            #expect(mapped.host == .v4(.loopback))
            #expect(mapped.port != 0)
        }
    }

    @Test("STUNClient errors say refused or timeout", arguments: [STUNClient.Transport.udp, .tcp])
    func clientErrors(transport: STUNClient.Transport) async throws {
        // Refused: nothing listens on a port that was free a moment ago.
        let closedPort = try Loopback.freePort(transport == .udp ? .udp : .tcp)
        let refused = await #expect(throws: STUNClientError.self) {
            try await Loopback.offPool {
                try STUNClient.mappedEndpoint(
                    server: Endpoint(IPv4Address.loopback, port: closedPort), transport: transport,
                    timeout: .seconds(5))
            }
        }
        #expect(refused?.code == .refused, "\(String(describing: refused))")
        #expect(refused?.description.contains("127.0.0.1:\(closedPort)") == true)

        // Timeout: a socket that takes the request and never answers.
        let silent = try Loopback.silentServer(transport == .udp ? .udp : .tcp)
        defer { close(silent.fd) }
        let timedOut = await #expect(throws: STUNClientError.self) {
            try await Loopback.offPool {
                try STUNClient.mappedEndpoint(
                    server: Endpoint(IPv4Address.loopback, port: silent.port), transport: transport,
                    timeout: .milliseconds(700))
            }
        }
        #expect(timedOut?.code == .timeout, "\(String(describing: timedOut))")
    }

    @Test("STUNClient rejects a TCP answer that is not STUN")
    func clientBadResponse() async throws {
        let server = try Loopback.silentServer(.tcp)
        defer { close(server.fd) }
        let answering = Thread {
            let connection = accept(server.fd, nil, nil)
            guard connection >= 0 else { return }
            var request = [UInt8](repeating: 0, count: 512)
            _ = recv(connection, &request, request.count, 0)
            let reply = Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8)
            _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            usleep(200_000)
            close(connection)
        }
        answering.start()
        let error = await #expect(throws: STUNClientError.self) {
            try await Loopback.offPool {
                try STUNClient.mappedEndpoint(
                    server: Endpoint(IPv4Address.loopback, port: server.port), transport: .tcp, timeout: .seconds(5))
            }
        }
        #expect(error?.code == .badResponse, "\(String(describing: error))")
    }

    // MARK: Answers

    @Test("a TCP client may send several requests on one connection, in any split")
    func pipelinedTCP() async throws {
        try await TestReflector.with { reflector in
            let connection = try Loopback.connectTCP(port: reflector.tcpPort)
            defer { close(connection.fd) }
            let requests = (0..<3).map { _ in STUNMessage.bindingRequest(includesFingerprint: true) }
            // Three requests in one write, then a fourth one byte at a time.
            try Loopback.sendAll(connection.fd, requests.flatMap { $0.encoded() })
            let slow = STUNMessage.bindingRequest()
            for byte in slow.encoded() { try Loopback.sendAll(connection.fd, [byte]) }
            let responses = try await Loopback.offPool { try Loopback.readMessages(connection.fd, count: 4) }
            #expect(responses.map(\.transactionID) == (requests + [slow]).map(\.transactionID))
            for response in responses {
                #expect(response.type == .bindingSuccess)
                #expect(response.mappedEndpoint == Endpoint(IPv4Address.loopback, port: connection.localPort))
                #expect(response.attribute(.mappedAddress) == .mappedAddress(
                    Endpoint(IPv4Address.loopback, port: connection.localPort)))
                #expect(response.software == "boxer-mesh")
            }
            #expect(responses.map(\.includesFingerprint) == [true, true, true, false])
        }
    }

    @Test("answers: classic RFC 3489 clients, CHANGE-REQUEST, other methods, non-requests")
    func answerRules() throws {
        let peer = Endpoint(IPv4Address(198, 51, 100, 7), port: 4242)
        // Classic: MAPPED-ADDRESS only, cookie word echoed.
        let classic: [UInt8] = [
            0x00, 0x01, 0x00, 0x08, 0x01, 0x43, 0x80, 0x5E, 0xEB, 0x63, 0x3A, 0x65, 0x43, 0x34, 0x0A, 0x4D, 0xE0, 0xFF,
            0x4E, 0x65, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
        ]
        guard case .reply(let classicReply) = Reflector.answer(to: classic, from: peer, software: "s") else {
            Issue.record("classic request not answered")
            return
        }
        #expect(classicReply.type == .bindingSuccess)
        #expect(classicReply.cookie == 0x0143_805E)
        #expect(classicReply.attributes == [.mappedAddress(peer)])
        #expect(Array(classicReply.encoded()[4..<20]) == Array(classic[4..<20]))

        // CHANGE-REQUEST asking for another address: 420, since there is none.
        let change = STUNMessage(
            type: .bindingRequest, transactionID: .random(),
            attributes: [.changeRequest(changeIP: true, changePort: true)])
        guard case .reply(let changeReply) = Reflector.answer(to: change.encoded(), from: peer, software: "s") else {
            Issue.record("CHANGE-REQUEST not answered")
            return
        }
        #expect(changeReply.type == .bindingError)
        #expect(changeReply.errorCode?.code == 420)
        #expect(changeReply.attribute(.unknownAttributes) == .unknownAttributes([.changeRequest]))

        // Another method: 400.
        let other = STUNMessage(
            type: STUNMessageType(method: STUNMethod(rawValue: 0x003), messageClass: .request),
            transactionID: .random())
        guard case .reply(let otherReply) = Reflector.answer(to: other.encoded(), from: peer, software: "s") else {
            Issue.record("other method not answered")
            return
        }
        #expect(otherReply.type.messageClass == .errorResponse)
        #expect(otherReply.errorCode?.code == 400)

        // Responses, indications and garbage are dropped.
        let response = STUNMessage(type: .bindingSuccess, transactionID: .random())
        #expect(Reflector.answer(to: response.encoded(), from: peer, software: "s") != .reply(response))
        if case .reply = Reflector.answer(to: response.encoded(), from: peer, software: "s") {
            Issue.record("a response was answered")
        }
        if case .reply = Reflector.answer(to: [1, 2, 3], from: peer, software: "s") {
            Issue.record("garbage was answered")
        }

        // A normal request: XOR-MAPPED-ADDRESS and MAPPED-ADDRESS, FINGERPRINT mirrored.
        let request = STUNMessage.bindingRequest(includesFingerprint: true)
        guard case .reply(let reply) = Reflector.answer(to: request.encoded(), from: peer, software: "s") else {
            Issue.record("request not answered")
            return
        }
        #expect(reply.attributes == [.xorMappedAddress(peer), .mappedAddress(peer), .software("s")])
        #expect(reply.includesFingerprint)
        #expect(try STUNMessage(parsing: reply.encoded()) == reply)
    }

    // MARK: Bad input

    @Test("20,000 bad UDP datagrams are dropped, logged a few lines a second, and a real request still works")
    func udpFlood() async throws {
        let log = CapturedLog()
        try await TestReflector.with(log: log) { reflector in
            let sender = try Loopback.udpSocket()
            defer { close(sender) }
            var generator = SystemRandomNumberGenerator()
            let valid = STUNMessage.bindingRequest().encoded()
            for index in 0..<20_000 {
                var datagram: [UInt8]
                switch index % 5 {
                case 0: datagram = (0..<Int.random(in: 0...200)).map { _ in UInt8.random(in: 0...255) }
                case 1: datagram = Array(valid.prefix(Int.random(in: 0..<valid.count)))  // truncated
                case 2: datagram = [UInt8](repeating: 0, count: 3000)  // oversized
                case 3:  // a response, which a server must not answer
                    datagram = STUNMessage(type: .bindingSuccess, transactionID: .random(using: &generator)).encoded()
                default:  // STUN header, attribute soup
                    datagram = valid + (0..<8).map { _ in UInt8.random(in: 0...255) }
                    datagram[3] = 8
                }
                Loopback.sendDatagram(sender, datagram, toPort: reflector.udpPort)
                if index % 1000 == 999 { usleep(1000) }  // let the reflector keep up, mostly
            }
            let mapped = try await Loopback.offPool {
                try STUNClient.mappedEndpoint(server: reflector.endpoint(.udp), transport: .udp, timeout: .seconds(5))
            }
            #expect(mapped.host == .v4(.loopback))
            try await Task.sleep(for: .milliseconds(1200))  // one more summary window
        }
        let drops = log.messages.filter { $0.contains("dropped") && $0.contains("STUN UDP") }
        #expect(!drops.isEmpty, "nothing was logged about the flood")
        #expect(drops.count < 1000, "the flood flooded the log: \(drops.count) lines")
        #expect(drops.contains { $0.contains("more bad inputs") }, "no summary line: \(drops.prefix(10))")
    }

    @Test("bad TCP input closes that connection only, and a real request still works")
    func tcpBadInput() async throws {
        try await TestReflector.with { reflector in
            let valid = STUNMessage.bindingRequest().encoded()
            var oversized = valid
            oversized[2] = 0xFF
            oversized[3] = 0xFC
            let inputs: [(String, [UInt8])] = [
                ("random bytes", (0..<64).map { _ in UInt8.random(in: 0...255) }),
                ("HTTP", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)),
                ("oversized length", Array(oversized.prefix(20))),
                ("wrong cookie", [0, 1, 0, 0, 9, 9, 9, 9] + [UInt8](repeating: 0, count: 12)),
                ("valid then garbage", valid + [0xFF, 0xFF, 0xFF, 0xFF]),
                ("a response", STUNMessage(type: .bindingSuccess, transactionID: .random()).encoded()),
            ]
            for (name, bytes) in inputs {
                let connection = try Loopback.connectTCP(port: reflector.tcpPort)
                defer { close(connection.fd) }
                try Loopback.sendAll(connection.fd, bytes)
                let closed = try await Loopback.offPool { Loopback.waitForClose(connection.fd, timeout: .seconds(5)) }
                #expect(closed, "the reflector kept the connection after \(name)")
            }
            // A truncated frame, then the client gives up: nothing to answer, nothing breaks.
            let truncated = try Loopback.connectTCP(port: reflector.tcpPort)
            try Loopback.sendAll(truncated.fd, Array(valid.prefix(10)) + [])
            close(truncated.fd)
            let partial = try Loopback.connectTCP(port: reflector.tcpPort)
            var announcing = valid
            announcing[3] = 8  // announces 8 attribute bytes, sends 4
            try Loopback.sendAll(partial.fd, announcing + [0, 0, 0, 0])
            close(partial.fd)

            let mapped = try await Loopback.offPool {
                try STUNClient.mappedEndpoint(server: reflector.endpoint(.tcp), transport: .tcp, timeout: .seconds(5))
            }
            #expect(mapped.host == .v4(.loopback))
        }
    }

    @Test("more idle TCP connections than the cap: capped, closed when idle, and a real request still works")
    func idleTCPConnections() async throws {
        try await TestReflector.with({
            // A small cap keeps this test's descriptor count low while other suites launch processes.
            $0.maximumTCPConnections = 32
            $0.idleTimeout = .seconds(1)
        }) { reflector in
            var idle: [Int32] = []
            defer { idle.forEach { close($0) } }
            for _ in 0..<48 { idle.append(try Loopback.connectTCP(port: reflector.tcpPort).fd) }
            let mapped = try await Loopback.offPool {
                try STUNClient.mappedEndpoint(server: reflector.endpoint(.tcp), transport: .tcp, timeout: .seconds(5))
            }
            #expect(mapped.host == .v4(.loopback))
            // Every idle connection is closed by the reflector: evicted at the cap, or after the idle timeout.
            let fds = idle
            let stillOpen = try await Loopback.offPool {
                fds.filter { !Loopback.waitForClose($0, timeout: .seconds(15)) }.count
            }
            #expect(stillOpen == 0)
        }
    }

    // MARK: Life cycle

    @Test("cancellation stops run() promptly and frees both ports")
    func cancellation() async throws {
        let (ready, readyContinuation) = AsyncStream<ReflectorPorts>.makeStream()
        let reflector = Reflector(
            configuration: ReflectorConfiguration(host: "127.0.0.1", port: 0), logger: TestReflector.quietLogger
        ) { readyContinuation.yield($0) }
        let task = Task { try await reflector.run() }
        var iterator = ready.makeAsyncIterator()
        let ports = try #require(await iterator.next())
        let udpPort = try #require(ports.udp)
        let tcpPort = try #require(ports.tcp)
        #expect(udpPort == tcpPort, "with port 0, TCP should share the port UDP got")
        task.cancel()
        let stopped = await Loopback.finishes(within: .seconds(10)) { _ = try? await task.value }
        #expect(stopped, "run() did not return after cancellation")
        // The same ports can be bound again, exclusively (no SO_REUSEADDR/REUSEPORT on these probes).
        let udp = try Loopback.bindExclusive(.udp, port: udpPort)
        close(udp)
        let tcp = try Loopback.bindExclusive(.tcp, port: tcpPort)
        close(tcp)
    }

    @Test("graceful shutdown of a ServiceGroup stops the reflector")
    func gracefulShutdown() async throws {
        let (ready, readyContinuation) = AsyncStream<ReflectorPorts>.makeStream()
        let reflector = Reflector(
            configuration: ReflectorConfiguration(host: "127.0.0.1", port: 0), logger: TestReflector.quietLogger
        ) { readyContinuation.yield($0) }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [reflector], logger: TestReflector.quietLogger))
        let task = Task { try await group.run() }
        var iterator = ready.makeAsyncIterator()
        let ports = try #require(await iterator.next())
        await group.triggerGracefulShutdown()
        let stopped = await Loopback.finishes(within: .seconds(10)) { _ = try? await task.value }
        #expect(stopped, "the service group did not stop")
        close(try Loopback.bindExclusive(.udp, port: try #require(ports.udp)))
    }

    @Test("a port in use is a clear error")
    func bindFailure() async throws {
        let holder = try Loopback.silentServer(.udp)
        defer { close(holder.fd) }
        var configuration = ReflectorConfiguration(host: "127.0.0.1", port: holder.port)
        configuration.tcp = false
        let reflector = Reflector(configuration: configuration, logger: TestReflector.quietLogger)
        let error = await #expect(throws: ReflectorError.self) { try await reflector.run() }
        #expect(error?.code == .cannotBind)
        #expect(
            error?.description == "reflector cannot bind UDP 127.0.0.1:\(holder.port): Address already in use",
            "\(String(describing: error))")

        let badHost = Reflector(
            configuration: ReflectorConfiguration(host: "localhost", port: 0), logger: TestReflector.quietLogger)
        let hostError = await #expect(throws: ReflectorError.self) { try await badHost.run() }
        #expect(hostError?.code == .badHost)
    }
}

// MARK: - Helpers

/// A reflector on 127.0.0.1 with ephemeral ports for the length of one test.
struct TestReflector {
    let ports: ReflectorPorts

    var udpPort: UInt16 { ports.udp! }
    var tcpPort: UInt16 { ports.tcp! }

    func endpoint(_ transport: STUNClient.Transport) -> Endpoint {
        Endpoint(IPv4Address.loopback, port: transport == .udp ? udpPort : tcpPort)
    }

    static var quietLogger: Logger {
        var logger = Logger(label: "test-reflector")
        logger.logLevel = .error
        return logger
    }

    static func with<T: Sendable>(
        _ configure: (inout ReflectorConfiguration) -> Void = { _ in },
        log: CapturedLog? = nil,
        _ body: (TestReflector) async throws -> T
    ) async throws -> T {
        var configuration = ReflectorConfiguration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let logger = log.map { log in Logger(label: "test-reflector") { _ in log } } ?? quietLogger
        let (ready, readyContinuation) = AsyncStream<ReflectorPorts>.makeStream()
        let reflector = Reflector(configuration: configuration, logger: logger) { readyContinuation.yield($0) }
        let task = Task {
            defer { readyContinuation.finish() }
            try await reflector.run()
        }
        var iterator = ready.makeAsyncIterator()
        guard let ports = await iterator.next() else {
            try await task.value  // run() failed before serving: report why
            throw CancellationError()
        }
        do {
            let result = try await body(TestReflector(ports: ports))
            task.cancel()
            try await task.value
            return result
        } catch {
            task.cancel()
            _ = try? await task.value
            throw error
        }
    }
}

/// A log handler that keeps every message (any level), for checking how much a flood logs.
final class CapturedLog: LogHandler, @unchecked Sendable {
    private let storage = Mutex<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    var messages: [String] { storage.withLock { $0 } }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        storage.withLock { $0.append("\(event.level) \(event.message)") }
    }
}

/// Debian's `stun` (package stun-client: RFC 3489, UDP only; Debian has no TCP-capable STUN client).
private struct ExternalSTUNClient: Sendable {
    let path: String

    static let installed: ExternalSTUNClient? = {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        return directories.map { "\($0)/stun" }.first { FileManager.default.isExecutableFile(atPath: $0) }
            .map(ExternalSTUNClient.init)
    }()

    /// Runs test 1 of RFC 3489 (one Binding request) against 127.0.0.1 and returns what it printed (stdout and stderr).
    func run(server port: UInt16, localPort: UInt16) throws -> String {
        let result = try ChildProcess.run(
            [path, "127.0.0.1:\(port)", "1", "-v", "-p", "\(localPort)"], timeout: .seconds(20))
        return result.standardOutput + result.standardError
    }

    /// Whether the client reported no trouble reading the answer (it prints `ok=1` when it parsed all of it).
    func parsedCleanly(_ output: String) -> Bool {
        output.contains("ok=1") && !output.contains("problem")
    }

    /// Every `a.b.c.d:port` in the output that follows the word "mapped" on its line.
    func mappedEndpoints(in output: String) -> [String] {
        output.split(separator: "\n").filter { $0.lowercased().contains("mapped") }.flatMap { line in
            line.split(whereSeparator: { !($0.isNumber || $0 == "." || $0 == ":") })
                .filter { $0.filter { $0 == "." }.count == 3 && $0.contains(":") }
                .map(String.init)
        }
    }
}

/// Small blocking POSIX helpers on 127.0.0.1.
private enum Loopback {
    enum Transport { case udp, tcp }

    struct Connection {
        let fd: Int32
        let localPort: UInt16
    }

    /// Runs blocking work on a thread of its own, off Swift's cooperative pool.
    static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try work() }) }.start()
        }
    }

    /// Whether `operation` finishes within `limit`.
    static func finishes(within limit: Duration, _ operation: @escaping @Sendable () async -> Void) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await operation()
                return true
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    static func address(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    static func socketType(_ transport: Transport) -> Int32 {
        transport == .udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue)
    }

    static func bind(_ fd: Int32, port: UInt16) throws {
        var address = address(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Foundation.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EADDRINUSE) }
    }

    static func localPort(_ fd: Int32) -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// A port the system just handed out and that is free again.
    static func freePort(_ transport: Transport) throws -> UInt16 {
        let fd = socket(AF_INET, socketType(transport), 0)
        defer { close(fd) }
        try bind(fd, port: 0)
        return localPort(fd)
    }

    /// Binds `port` with no reuse options: fails if anything still holds it.
    static func bindExclusive(_ transport: Transport, port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, socketType(transport), 0)
        do {
            try bind(fd, port: port)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Binds a TCP socket to `port` with SO_REUSEADDR and SO_REUSEPORT, as a puncher does.
    static func bindReusable(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        do {
            try bind(fd, port: port)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// A bound socket that never answers (a listening TCP socket that never accepts).
    static func silentServer(_ transport: Transport) throws -> (fd: Int32, port: UInt16) {
        let fd = try bindExclusive(transport, port: 0)
        if transport == .tcp { listen(fd, 16) }
        return (fd, localPort(fd))
    }

    static func udpSocket() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        return fd
    }

    static func sendDatagram(_ fd: Int32, _ bytes: [UInt8], toPort port: UInt16) {
        var address = address(port: port)
        _ = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT),
                        $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    static func connectTCP(port: UInt16) throws -> Connection {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = address(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .ECONNREFUSED)
        }
        return Connection(fd: fd, localPort: localPort(fd))
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EPIPE) }
            offset += sent
        }
    }

    /// Reads exactly `count` STUN messages (5 s per read at most).
    static func readMessages(_ fd: Int32, count: Int) throws -> [STUNMessage] {
        var buffer: [UInt8] = []
        var messages: [STUNMessage] = []
        while messages.count < count {
            if let length = try STUNMessage.frameLength(ofPrefix: buffer), buffer.count >= length {
                messages.append(try STUNMessage(parsing: buffer[0..<length]))
                buffer.removeFirst(length)
                continue
            }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 5000) == 1 else { throw POSIXError(.ETIMEDOUT) }
            var chunk = [UInt8](repeating: 0, count: 2048)
            let received = recv(fd, &chunk, chunk.count, 0)
            guard received > 0 else { throw POSIXError(.ECONNRESET) }
            buffer += chunk[0..<received]
        }
        return messages
    }

    /// Whether the peer closes the connection (EOF or reset) within `timeout`; data received meanwhile is discarded.
    static func waitForClose(_ fd: Int32, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let remaining = ContinuousClock.now.duration(to: deadline)
            let milliseconds = Int32(remaining.components.seconds * 1000) + 1
            guard poll(&entry, 1, milliseconds) == 1 else { continue }
            var chunk = [UInt8](repeating: 0, count: 2048)
            let received = recv(fd, &chunk, chunk.count, 0)
            if received <= 0 { return true }
        }
        return false
    }
}
