import WireFormat

/// Hands out a mesh's virtual addresses. Freed addresses go to the back of the line (the cursor moves on), so a
/// name that leaves and a stranger that joins right after do not share an address while old connections linger.
struct AddressPool {
    let subnet: IPv4Subnet
    private var inUse: Set<UInt32> = []
    private var cursor: UInt32

    init(subnet: IPv4Subnet) {
        self.subnet = subnet
        cursor = subnet.hosts.lowerBound
    }

    var count: Int { inUse.count }

    /// `preferred` when it is free and inside the subnet (a node rejoining after a broker restart), else the next
    /// free address after the cursor; nil when every host address is taken.
    mutating func allocate(preferred: IPv4Address? = nil) -> IPv4Address? {
        let hosts = subnet.hosts
        if let preferred, hosts.contains(preferred.value), inUse.insert(preferred.value).inserted {
            return preferred
        }
        guard inUse.count < hosts.count else { return nil }
        var candidate = cursor
        while inUse.contains(candidate) {
            candidate = candidate == hosts.upperBound ? hosts.lowerBound : candidate + 1
        }
        inUse.insert(candidate)
        cursor = candidate == hosts.upperBound ? hosts.lowerBound : candidate + 1
        return IPv4Address(candidate)
    }

    mutating func release(_ address: IPv4Address) {
        inUse.remove(address.value)
    }
}
