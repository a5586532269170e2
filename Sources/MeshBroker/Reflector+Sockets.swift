import Glibc
import WireFormat

/// Plain POSIX socket plumbing for the reflector: socket addresses to and from ``Endpoint``, binding with errors
/// that say what failed. Everything here is non-blocking system calls only.
enum ReflectorSocket {
    /// The text of an errno value, e.g. "Address already in use".
    static func describe(errno code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// A `sockaddr_in` or `sockaddr_in6` for the endpoint, in a `sockaddr_storage`, with its length.
    static func address(_ endpoint: Endpoint) -> (sockaddr_storage, socklen_t) {
        var storage = sockaddr_storage()
        switch endpoint.host {
        case .v4(let ip):
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = endpoint.port.bigEndian
            address.sin_addr = in_addr(s_addr: ip.value.bigEndian)
            withUnsafeBytes(of: &address) { source in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
            }
            return (storage, socklen_t(MemoryLayout<sockaddr_in>.size))
        case .v6(let ip):
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = endpoint.port.bigEndian
            let bytes = ip.bytes
            withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: bytes) }
            withUnsafeBytes(of: &address) { source in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
            }
            return (storage, socklen_t(MemoryLayout<sockaddr_in6>.size))
        }
    }

    /// The endpoint in a socket address; IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) come back as IPv4.
    static func endpoint(_ storage: sockaddr_storage) -> Endpoint? {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let address = withUnsafeBytes(of: &storage) { $0.loadUnaligned(as: sockaddr_in.self) }
            let ip = IPv4Address(UInt32(bigEndian: address.sin_addr.s_addr))
            return Endpoint(ip, port: UInt16(bigEndian: address.sin_port))
        case AF_INET6:
            var address = withUnsafeBytes(of: &storage) { $0.loadUnaligned(as: sockaddr_in6.self) }
            let bytes = withUnsafeBytes(of: &address.sin6_addr) { Array($0) }
            let port = UInt16(bigEndian: address.sin6_port)
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
                return Endpoint(IPv4Address(bytes: bytes[12..<16])!, port: port)
            }
            return IPv6Address(bytes: bytes).map { Endpoint($0, port: port) }
        default:
            return nil
        }
    }

    /// The local endpoint a socket is bound to.
    static func localEndpoint(of fd: Int32) -> Endpoint? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? endpoint(storage) : nil
    }

    /// A non-blocking, close-on-exec socket bound to `endpoint` (UDP, or a listening TCP socket with
    /// SO_REUSEADDR). Throws ``ReflectorError`` naming the protocol, the address and the system's reason.
    static func bind(_ transport: ReflectorError.Transport, _ endpoint: Endpoint) throws -> Int32 {
        let family: Int32
        switch endpoint.host {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        }
        let type = transport == .udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue)
        let fd = socket(family, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ReflectorError(.cannotBind, transport, endpoint, errno: errno) }
        var one: Int32 = 1
        if transport == .tcp {
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if family == AF_INET6 {
            // "::" serves IPv4 clients too (as ::ffff:a.b.c.d), whatever the system default.
            var zero: Int32 = 0
            _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
        }
        var (storage, length) = address(endpoint)
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw ReflectorError(.cannotBind, transport, endpoint, errno: code)
        }
        if transport == .tcp {
            guard listen(fd, 128) == 0 else {
                let code = errno
                close(fd)
                throw ReflectorError(.cannotBind, transport, endpoint, errno: code)
            }
        }
        return fd
    }
}
