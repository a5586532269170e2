import FoundationEssentials
import Glibc
import PlainText
import WireFormat

/// Where the broker is: `HOST`, `HOST:PORT`, `[IPv6]:PORT` or a ZeroMQ endpoint `tcp://HOST:PORT`.
public struct BrokerAddress: Sendable, CustomStringConvertible {
    public var host: String
    public var controlPort: UInt16

    public static let defaultControlPort: UInt16 = 7700
    /// The environment variable `--broker` defaults to.
    public static let environmentVariable = "BOXER_BROKER"

    public init(host: String, controlPort: UInt16 = defaultControlPort) {
        self.host = host
        self.controlPort = controlPort
    }

    public init(parsing text: String) throws(BrokerAddressError) {
        var rest = Substring(text.trimmingWhitespace())
        if rest.hasPrefix("tcp://") { rest = rest.dropFirst(6) }
        guard !rest.isEmpty else { throw BrokerAddressError("broker address is empty") }
        var host = rest
        var portText: Substring? = nil
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw BrokerAddressError("'\(text)': missing ']' after IPv6 address") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw BrokerAddressError("'\(text)': expected ':PORT' after ']'") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            guard rest.firstIndex(of: ":") == colon else {
                throw BrokerAddressError("'\(text)': write IPv6 addresses in brackets, like [::1]:7700")
            }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains("/") else { throw BrokerAddressError("'\(text)' has no host name") }
        var port = Self.defaultControlPort
        if let portText {
            guard let parsed = UInt16(portText), parsed > 0 else {
                throw BrokerAddressError("'\(text)': port must be a number from 1 to 65535")
            }
            port = parsed
        }
        self.init(host: String(host), controlPort: port)
    }

    /// The ZeroMQ endpoint of a port on the broker host.
    public func endpoint(port: UInt16) -> String {
        host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
    }

    public var controlEndpoint: String { endpoint(port: controlPort) }

    /// The broker host's IPv4 address (a name is looked up once), for the STUN reflector.
    public func ipv4Address() throws(BrokerAddressError) -> IPv4Address {
        if let address = IPv4Address(host) { return address }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &result)
        defer { if let result { freeaddrinfo(result) } }
        guard status == 0, let first = result, let address = first.pointee.ai_addr else {
            throw BrokerAddressError("cannot resolve broker host '\(host)': \(String(cString: gai_strerror(status)))")
        }
        let ipv4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
        return IPv4Address(UInt32(bigEndian: ipv4))
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(controlPort)" : "\(host):\(controlPort)" }
}

/// The broker address could not be parsed; the message says why.
public struct BrokerAddressError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}
