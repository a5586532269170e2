import Glibc

/// Conversions between ``Endpoint`` and the C socket address structs, shared by everything that opens sockets.
extension Endpoint {
    /// A `sockaddr_in` or `sockaddr_in6` for the endpoint, in a `sockaddr_storage`, with its length.
    public var socketAddress: (sockaddr_storage, socklen_t) {
        var storage = sockaddr_storage()
        switch host {
        case .v4(let ip):
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = in_addr(s_addr: ip.value.bigEndian)
            withUnsafeBytes(of: &address) { source in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
            }
            return (storage, socklen_t(MemoryLayout<sockaddr_in>.size))
        case .v6(let ip):
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            let bytes = ip.bytes
            withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: bytes) }
            withUnsafeBytes(of: &address) { source in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
            }
            return (storage, socklen_t(MemoryLayout<sockaddr_in6>.size))
        }
    }

    /// The endpoint in a socket address; IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) come back as IPv4.
    public init?(socketAddress storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let address = withUnsafeBytes(of: &storage) { $0.loadUnaligned(as: sockaddr_in.self) }
            self.init(IPv4Address(UInt32(bigEndian: address.sin_addr.s_addr)), port: UInt16(bigEndian: address.sin_port))
        case AF_INET6:
            var address = withUnsafeBytes(of: &storage) { $0.loadUnaligned(as: sockaddr_in6.self) }
            let bytes = withUnsafeBytes(of: &address.sin6_addr) { Array($0) }
            let port = UInt16(bigEndian: address.sin6_port)
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
                self.init(IPv4Address(bytes: bytes[12..<16])!, port: port)
            } else if let ip = IPv6Address(bytes: bytes) {
                self.init(ip, port: port)
            } else {
                return nil
            }
        default:
            return nil
        }
    }

    /// The local endpoint socket `fd` is bound to (getsockname), or nil.
    public static func local(of fd: Int32) -> Endpoint? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? Endpoint(socketAddress: storage) : nil
    }
}
