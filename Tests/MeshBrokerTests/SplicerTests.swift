import Foundation
import Glibc
import Logging
import Testing
import WireFormat

@testable import MeshBroker

/// The broker's splice port on 127.0.0.1 with real TCP sockets: it joins the two proven ends of a relayed
/// connection and moves bytes, FINs and resets between them; anything else is closed.
@Suite("The broker's splice port", .serialized, .timeLimit(.minutes(2)))
struct SplicerTests {
    static let initiatorSession = Array(repeating: UInt8(1), count: 32)
    static let acceptorSession = Array(repeating: UInt8(2), count: 32)
    static let id: UInt64 = 0x1234_5678_9abc

    /// A splice port whose directory knows connection ``id`` between the two sessions; `relayed`: the relay opened it.
    func withSplicer(
        relayed: Bool = true, configure: (inout SpliceConfiguration) -> Void = { _ in },
        _ body: (_ port: UInt16, _ directory: RelayDirectory) async throws -> Void
    ) async throws {
        let directory = RelayDirectory()
        directory.sessionOpened(token: Self.initiatorSession, mesh: "m")
        directory.sessionOpened(token: Self.acceptorSession, mesh: "m")
        let ends = RelayDirectory.Ends(mesh: "m", initiator: Member(), acceptor: Member(), port: 5000)
        directory.connectionSignalled(Self.id, initiator: Self.initiatorSession, acceptor: Self.acceptorSession, ends: ends)
        if relayed { directory.markRelayed(Self.id) }
        var configuration = SpliceConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configure(&configuration)
        var logger = Logger(label: "test-splicer")
        logger.logLevel = .error
        let (ready, readyContinuation) = AsyncStream<UInt16>.makeStream()
        let splicer = Splicer(configuration: configuration, directory: directory, logger: logger) { readyContinuation.yield($0) }
        let task = Task { try await splicer.run() }
        defer { task.cancel() }
        var iterator = ready.makeAsyncIterator()
        guard let port = await iterator.next() else { throw CancellationError() }
        try await body(port, directory)
    }

    /// A blocking TCP connection to the splice port (reads time out after 5 s) that sent `hello`.
    func dial(_ port: UInt16, _ hello: [UInt8]) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var (storage, length) = Endpoint(IPv4Address.loopback, port: port).socketAddress
        let connected = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) } }
        guard connected == 0 else { throw SpliceTestError("connect: \(errno)") }
        try sendAll(fd, hello)
        return fd
    }

    func hello(_ role: SpliceHello.Role, id: UInt64 = Self.id, session: [UInt8]? = nil) -> [UInt8] {
        SpliceHello(connectionID: id, role: role, session: session ?? (role == .initiator ? Self.initiatorSession : Self.acceptorSession)).bytes
    }

    func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw SpliceTestError("send: \(errno)") }
            offset += sent
        }
    }

    /// Reads until EOF (or `count` bytes); throws on a reset or a timeout.
    func read(_ fd: Int32, upTo count: Int = .max) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < count {
            let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - bytes.count), 0) }
            if got == 0 { break }
            guard got > 0 else { throw SpliceTestError("recv: \(String(cString: strerror(errno)))") }
            bytes += chunk[0..<got]
        }
        return bytes
    }

    /// The splice port closed the connection: EOF or a reset, well before the read timeout.
    func closedByBroker(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        let got = recv(fd, &byte, 1, 0)
        return got == 0 || (got < 0 && errno == ECONNRESET)
    }

    @Test("the two ends of a relayed connection are joined: 4 MiB one way and a reply the other arrive whole, each FIN after its bytes")
    func joins() async throws {
        try await withSplicer { port, _ in
            let initiator = try dial(port, hello(.initiator))
            defer { close(initiator) }
            // The first end's bytes wait inside the broker's socket until the second end comes.
            let payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
            let writer = Thread { try? sendAll(initiator, payload); shutdown(initiator, Int32(SHUT_WR)) }
            writer.start()
            let acceptor = try dial(port, hello(.acceptor))
            defer { close(acceptor) }
            let received = try read(acceptor)
            #expect(received == payload)
            try sendAll(acceptor, Array("done".utf8))
            shutdown(acceptor, Int32(SHUT_WR))
            #expect(try read(initiator) == Array("done".utf8))
        }
    }

    @Test("a reset on one end resets the other")
    func reset() async throws {
        try await withSplicer { port, _ in
            let initiator = try dial(port, hello(.initiator))
            let acceptor = try dial(port, hello(.acceptor))
            defer { close(acceptor) }
            try sendAll(initiator, [1, 2, 3])
            #expect(try read(acceptor, upTo: 3) == [1, 2, 3])
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(initiator, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            close(initiator)
            var byte: UInt8 = 0
            let got = recv(acceptor, &byte, 1, 0)
            #expect(got < 0 && errno == ECONNRESET, "recv gave \(got), errno \(errno)")
        }
    }

    @Test("an end that resets while bytes are on their way to it resets the other end, and the splice port serves on")
    func resetWhileSending() async throws {
        try await withSplicer { port, directory in
            let initiator = try dial(port, hello(.initiator))
            defer { close(initiator) }
            let acceptor = try dial(port, hello(.acceptor))
            // The acceptor reads nothing and goes away while the initiator keeps sending: the broker's next write
            // towards it fails, which must end the pair, not the broker.
            var small: Int32 = 4096
            setsockopt(acceptor, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            let writer = Thread {
                let chunk = [UInt8](repeating: 7, count: 65536)
                for _ in 0..<512 { guard (try? sendAll(initiator, chunk)) != nil else { return } }
            }
            writer.start()
            try await Task.sleep(for: .milliseconds(200))
            // First a FIN (the broker's socket to it is then in CLOSE_WAIT, where a later reset makes writes fail
            // with EPIPE and, without MSG_NOSIGNAL, which splice(2) cannot pass, raise SIGPIPE), then the reset.
            shutdown(acceptor, Int32(SHUT_WR))
            try await Task.sleep(for: .milliseconds(100))
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(acceptor, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            close(acceptor)
            #expect(await eventually(timeout: .seconds(5)) {
                var byte: UInt8 = 0
                let got = recv(initiator, &byte, 1, Int32(MSG_DONTWAIT))
                return got == 0 || (got < 0 && errno == ECONNRESET)
            }, "the initiator's end was not reset")
            // The splice port still joins new connections.
            let id = Self.id + 7
            let ends = RelayDirectory.Ends(mesh: "m", initiator: Member(), acceptor: Member(), port: 5000)
            directory.connectionSignalled(id, initiator: Self.initiatorSession, acceptor: Self.acceptorSession, ends: ends)
            directory.markRelayed(id)
            let again = [try dial(port, hello(.initiator, id: id)), try dial(port, hello(.acceptor, id: id))]
            defer { again.forEach { close($0) } }
            try sendAll(again[0], [9])
            #expect(try read(again[1], upTo: 1) == [9])
        }
    }

    @Test("hellos that prove nothing are closed: wrong session, unknown connection, bad magic, short, a second end of the same role")
    func refuses() async throws {
        try await withSplicer { port, _ in
            var bad = hello(.initiator)
            bad[0] = UInt8(ascii: "X")
            let refused = [
                try dial(port, hello(.initiator, session: Self.acceptorSession)),
                try dial(port, hello(.acceptor, id: Self.id + 1)),
                try dial(port, bad),
            ]
            for fd in refused {
                #expect(closedByBroker(fd))
                close(fd)
            }
            // Two initiator ends: whichever hello the broker reads second is closed, the other waits.
            let twins = [try dial(port, hello(.initiator)), try dial(port, hello(.initiator))]
            defer { twins.forEach { close($0) } }
            var entries = twins.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            #expect(poll(&entries, 2, 3000) == 1, "exactly one of two ends of the same role is closed")
            let (closed, waiting) = entries[0].revents != 0 ? (twins[0], twins[1]) : (twins[1], twins[0])
            #expect(closedByBroker(closed))
            // The one that waits is joined when its acceptor comes.
            let acceptor = try dial(port, hello(.acceptor))
            defer { close(acceptor) }
            try sendAll(waiting, [42])
            #expect(try read(acceptor, upTo: 1) == [42])
        }
    }

    @Test("a connection the relay never carried is not spliced")
    func notRelayed() async throws {
        try await withSplicer(relayed: false) { port, _ in
            let fd = try dial(port, hello(.initiator))
            #expect(closedByBroker(fd))
            close(fd)
        }
    }

    @Test("an end whose partner never comes, and one that sends half a hello, are closed at their deadlines")
    func deadlines() async throws {
        try await withSplicer(configure: { $0.partnerTimeout = .milliseconds(300); $0.helloTimeout = .milliseconds(300) }) { port, _ in
            let started = ContinuousClock.now
            let lone = try dial(port, hello(.initiator))
            let half = try dial(port, Array(hello(.acceptor).prefix(10)))
            #expect(closedByBroker(lone))
            #expect(closedByBroker(half))
            #expect(ContinuousClock.now - started < .seconds(4))
            close(lone)
            close(half)
        }
    }
}

struct SpliceTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
