import Glibc
import WireFormat

/// An internet socket address as an app's memory holds it (`sockaddr_in`, or `sockaddr_in6`, whose IPv4 form is a
/// v4-mapped address `::ffff:a.b.c.d`). The supervisor reads these from the app's connect/bind arguments and
/// writes them back for accept/getsockname/getpeername, in the family the app's socket has.
struct AppSocketAddress: Equatable, Sendable {
    /// `AF_INET` or `AF_INET6`.
    var family: Int32
    var port: UInt16
    /// The IPv4 address (or the one an IPv6 address maps; 0.0.0.0 for `::`); nil for an IPv6 address that maps none.
    var ipv4: IPv4Address?
    /// 0.0.0.0 or `::`.
    var isUnspecified: Bool

    static let inetLength = MemoryLayout<sockaddr_in>.size    // 16
    static let inet6Length = MemoryLayout<sockaddr_in6>.size  // 28

    init(family: Int32, ipv4: IPv4Address, port: UInt16) {
        self.family = family
        self.port = port
        self.ipv4 = ipv4
        isUnspecified = ipv4 == .any
    }

    /// Parses a sockaddr; nil for any other family or a short one (the kernel will say EINVAL itself).
    init?(bytes: [UInt8]) {
        guard bytes.count >= 2 else { return nil }
        let family = Int32(UInt16(bytes[0]) | UInt16(bytes[1]) << 8)  // sa_family_t is in host order (little endian)
        switch family {
        case AF_INET where bytes.count >= Self.inetLength:
            ipv4 = IPv4Address(bytes: bytes[4..<8])
            isUnspecified = ipv4 == .any
        case AF_INET6 where bytes.count >= Self.inet6Length:
            let address = Array(bytes[8..<24])
            let mapped = address[0..<10].allSatisfy { $0 == 0 } && address[10] == 0xff && address[11] == 0xff
            isUnspecified = address.allSatisfy { $0 == 0 }
            // `::` stands for every address, IPv4 ones too on a dual-stack socket: as 0.0.0.0.
            ipv4 = mapped ? IPv4Address(bytes: address[12..<16]) : isUnspecified ? .any : nil
        default:
            return nil
        }
        self.family = family
        port = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
    }

    /// The sockaddr bytes: `sockaddr_in`, or `sockaddr_in6` with the v4-mapped form (`::` when unspecified).
    var bytes: [UInt8] {
        let familyBytes = [UInt8(truncatingIfNeeded: family), UInt8(truncatingIfNeeded: family >> 8)]
        let portBytes = [UInt8(port >> 8), UInt8(truncatingIfNeeded: port)]
        let v4 = (ipv4 ?? .any).bytes
        if family == AF_INET {
            return familyBytes + portBytes + v4 + [UInt8](repeating: 0, count: 8)
        }
        let address = isUnspecified ? [UInt8](repeating: 0, count: 16) : [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + v4
        return familyBytes + portBytes + [0, 0, 0, 0] + address + [0, 0, 0, 0]
    }

    /// The same family and port at the unspecified address (0.0.0.0 or `::`).
    var unspecified: AppSocketAddress {
        var copy = self
        copy.ipv4 = .any
        copy.isUnspecified = true
        return copy
    }

    /// Whether this is an address of the mesh subnet, to be handled by the node.
    func isMesh(in subnet: IPv4Subnet) -> Bool {
        guard let ipv4, !isUnspecified else { return false }
        return subnet.contains(ipv4)
    }
}

extension AppSocketAddress {
    /// The local address of a socket the node holds (getsockname), nil if not an internet one.
    init?(localOf fd: Int32) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        self.init(storage: storage, length: length)
    }

    /// An address the kernel filled in.
    init?(storage: sockaddr_storage, length: socklen_t) {
        var storage = storage
        let bytes = withUnsafeBytes(of: &storage) { Array($0.prefix(Int(length))) }
        self.init(bytes: bytes)
    }
}
