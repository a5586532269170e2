import Glibc
import WireFormat

/// Plain POSIX socket plumbing for the reflector (and the splice port): binding with errors that say what failed. Everything here is non-blocking system calls only.
enum ReflectorSocket {
    /// The text of an errno value, e.g. "Address already in use".
    static func describe(errno code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// A non-blocking, close-on-exec socket bound to `endpoint` (UDP, or a listening TCP socket with
    /// SO_REUSEADDR). Throws ``ReflectorError`` naming the component, the protocol, the address and the system's reason.
    static func bind(_ transport: ReflectorError.Transport, _ endpoint: Endpoint, component: String = "reflector") throws -> Int32 {
        let family: Int32
        switch endpoint.host {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        }
        let type = transport == .udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue)
        let fd = socket(family, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ReflectorError(.cannotBind, transport, endpoint, errno: errno, component: component) }
        var one: Int32 = 1
        if transport == .tcp {
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if family == AF_INET6 {
            // "::" serves IPv4 clients too (as ::ffff:a.b.c.d), whatever the system default.
            var zero: Int32 = 0
            _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
        }
        var (storage, length) = endpoint.socketAddress
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw ReflectorError(.cannotBind, transport, endpoint, errno: code, component: component)
        }
        if transport == .tcp {
            guard listen(fd, 128) == 0 else {
                let code = errno
                close(fd)
                throw ReflectorError(.cannotBind, transport, endpoint, errno: code, component: component)
            }
        }
        return fd
    }
}
