/// An IPv4 network in CIDR notation, such as the mesh's `100.64.0.0/16`.
public struct IPv4Subnet: Hashable, Sendable, CustomStringConvertible {
    public let network: IPv4Address
    public let prefixLength: Int

    /// The shared address space (RFC 6598) that mesh addresses come from by default.
    public static let sharedAddressSpace = try! IPv4Subnet("100.64.0.0/10")

    /// Parses "A.B.C.D/N" with N from 8 to 30 (a mesh needs room for hosts). Host bits must be zero.
    public init(_ cidr: String) throws(AddressError) {
        let parts = cidr.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4Address(String(parts[0])), let length = Int(parts[1]) else {
            throw AddressError("'\(cidr)' is not a subnet in CIDR notation, like 100.64.0.0/16")
        }
        guard (8...30).contains(length) else {
            throw AddressError("subnet '\(cidr)': prefix length must be between /8 and /30")
        }
        let mask: UInt32 = length == 0 ? 0 : ~0 << (32 - UInt32(length))
        guard address.value & ~mask == 0 else {
            throw AddressError("subnet '\(cidr)' has host bits set; did you mean \(IPv4Address(address.value & mask))/\(length)?")
        }
        network = address
        prefixLength = length
    }

    public var mask: UInt32 { ~0 << (32 - UInt32(prefixLength)) }

    public func contains(_ address: IPv4Address) -> Bool { address.value & mask == network.value }

    public func contains(_ other: IPv4Subnet) -> Bool {
        other.prefixLength >= prefixLength && contains(other.network)
    }

    /// Usable host addresses: all but the network and broadcast addresses.
    public var hosts: ClosedRange<UInt32> { (network.value + 1)...(network.value | ~mask) - 1 }

    public var description: String { "\(network)/\(prefixLength)" }
}

/// An address or subnet could not be parsed; the message says which and why.
public struct AddressError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
