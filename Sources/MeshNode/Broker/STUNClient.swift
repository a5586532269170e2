import Glibc
import WireFormat

/// Asks a STUN reflector which public `ip:port` a NAT mapped a local socket to (RFC 8489 Binding).
///
/// Blocking by design: ``mappedEndpoint(server:transport:localPort:reuse:timeout:)`` waits in `poll()` for at most
/// `timeout`. Call it from a thread of your own (the punching code runs on one), not from Swift's cooperative pool.
///
/// Hole punching needs the mapping of the very port it will punch from: pass `localPort`, and the same port can be
/// bound again right after this returns, because the socket is bound with SO_REUSEADDR and SO_REUSEPORT and a TCP
/// socket is closed with an RST (SO_LINGER 0), which leaves no TIME_WAIT behind on this side.
public enum STUNClient {
    /// How to reach the reflector.
    public enum Transport: String, Sendable, CustomStringConvertible {
        /// One datagram per try; retransmitted up to ``udpAttempts`` times within the timeout.
        case udp = "UDP"
        /// One connection, one request, one response (RFC 8489 framing).
        case tcp = "TCP"

        public var description: String { rawValue }
    }

    /// How many UDP requests are sent before giving up; waits double each time (1, 2, 4 sevenths of the timeout).
    public static let udpAttempts = 3

    /// Returns the endpoint the reflector saw this request come from (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from an
    /// old server).
    ///
    /// - Parameters:
    ///   - server: The reflector, e.g. the broker's `ip:3478`.
    ///   - transport: UDP or TCP.
    ///   - localPort: Bind this local port first (the port you will punch from); nil lets the system pick.
    ///   - reuse: Set SO_REUSEADDR and SO_REUSEPORT before binding, so that the port can be shared with, or bound
    ///     again by, the punching socket.
    ///   - timeout: The whole exchange (connect, retransmissions, response) ends by then.
    /// - Throws: ``STUNClientError`` saying what failed: timeout, refused, unreachable, bad response, socket error.
    public static func mappedEndpoint(
        server: Endpoint,
        transport: Transport,
        localPort: UInt16? = nil,
        reuse: Bool = true,
        timeout: Duration
    ) throws -> Endpoint {
        let deadline = ContinuousClock.now + timeout
        let socket = try DialSocket(server: server, transport: transport, localPort: localPort, reuse: reuse)
        defer { socket.close() }
        let request = STUNMessage.bindingRequest(software: "boxer-mesh", includesFingerprint: true)
        let response: STUNMessage
        switch transport {
        case .udp:
            response = try exchangeUDP(request, on: socket, deadline: deadline, timeout: timeout)
        case .tcp:
            try socket.connect(deadline: deadline, timeout: timeout)
            response = try exchangeTCP(request, on: socket, deadline: deadline, timeout: timeout)
        }
        return try mappedEndpoint(in: response, from: server, transport: transport)
    }

    /// Checks a response to our request and takes the mapped endpoint out of it.
    static func mappedEndpoint(
        in response: STUNMessage, from server: Endpoint, transport: Transport
    ) throws -> Endpoint {
        switch response.type.messageClass {
        case .successResponse:
            guard let endpoint = response.mappedEndpoint else {
                throw STUNClientError(.badResponse, server, transport, "success response has no (XOR-)MAPPED-ADDRESS")
            }
            return endpoint
        case .errorResponse:
            let code = response.errorCode.map(\.description) ?? "no ERROR-CODE"
            throw STUNClientError(.errorResponse, server, transport, "server answered with error \(code)")
        default:
            throw STUNClientError(.badResponse, server, transport, "answer is a \(response.type.messageClass)")
        }
    }

    private static func exchangeUDP(
        _ request: STUNMessage, on socket: DialSocket, deadline: ContinuousClock.Instant, timeout: Duration
    ) throws -> STUNMessage {
        let bytes = request.encoded()
        var lastRejection: String?
        // Waits of 1/7, 2/7 and 4/7 of the timeout add up to the whole of it.
        var wait = timeout / 7
        for attempt in 1...udpAttempts {
            try socket.send(bytes)
            let attemptDeadline = attempt == udpAttempts ? deadline : min(deadline, .now + wait)
            wait *= 2
            while let datagram = try socket.receiveDatagram(until: attemptDeadline) {
                do {
                    let response = try STUNMessage(parsing: datagram)
                    guard response.transactionID == request.transactionID else {
                        lastRejection = "answer for another transaction \(response.transactionID)"
                        continue
                    }
                    return response
                } catch {
                    lastRejection = "\(error)"  // stray or corrupt datagram: keep waiting for ours
                }
            }
        }
        let detail = "no answer after \(udpAttempts) requests within \(timeout)"
            + (lastRejection.map { "; ignored: \($0)" } ?? "")
        throw STUNClientError(.timeout, socket.server, .udp, detail)
    }

    private static func exchangeTCP(
        _ request: STUNMessage, on socket: DialSocket, deadline: ContinuousClock.Instant, timeout: Duration
    ) throws -> STUNMessage {
        try socket.sendAll(request.encoded(), deadline: deadline, timeout: timeout)
        var buffer: [UInt8] = []
        while true {
            let needed: Int?
            do {
                needed = try STUNMessage.frameLength(ofPrefix: buffer)
            } catch {
                throw STUNClientError(.badResponse, socket.server, .tcp, "\(error)")
            }
            if let needed, buffer.count >= needed {
                let response: STUNMessage
                do {
                    response = try STUNMessage(parsing: buffer[0..<needed])
                } catch {
                    throw STUNClientError(.badResponse, socket.server, .tcp, "\(error)")
                }
                guard response.transactionID == request.transactionID else {
                    throw STUNClientError(
                        .badResponse, socket.server, .tcp, "answer for another transaction \(response.transactionID)")
                }
                return response
            }
            let chunk = try socket.receiveStream(until: deadline, timeout: timeout, received: buffer.count)
            buffer.append(contentsOf: chunk)
        }
    }
}

/// Why ``STUNClient`` could not learn the mapped endpoint, e.g.
/// `STUN over TCP to 127.0.0.1:3478 failed: connection refused`.
public struct STUNClientError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let description: String
        /// No (valid) answer before the deadline.
        public static let timeout = Code(description: "timeout")
        /// The server's host refused: TCP RST, or ICMP port unreachable for UDP.
        public static let refused = Code(description: "refused")
        /// The answer was not a well-formed response to our request.
        public static let badResponse = Code(description: "badResponse")
        /// The server answered with a STUN error response.
        public static let errorResponse = Code(description: "errorResponse")
        /// A socket call failed (network unreachable, ...).
        public static let socket = Code(description: "socket")
        /// The local port cannot be used for this server: bound by another socket, or its address pair with the
        /// server is still taken (EADDRINUSE, EADDRNOTAVAIL). Another port may work.
        public static let portTaken = Code(description: "portTaken")
    }

    /// The kind of failure.
    public var code: Code
    /// The reflector asked.
    public var server: Endpoint
    /// UDP or TCP.
    public var transport: STUNClient.Transport
    /// What went wrong, in words.
    public var detail: String

    init(_ code: Code, _ server: Endpoint, _ transport: STUNClient.Transport, _ detail: String) {
        self.code = code
        self.server = server
        self.transport = transport
        self.detail = detail
    }

    public var description: String { "STUN over \(transport) to \(server) failed: \(detail)" }
}
