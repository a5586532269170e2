import Testing
import WireFormat

@Suite("Endpoint and IP address text forms")
struct EndpointTests {
    @Test("IPv4 endpoints print and parse as 1.2.3.4:5678")
    func ipv4() throws {
        let endpoint = Endpoint(IPv4Address(1, 2, 3, 4), port: 5678)
        #expect(endpoint.description == "1.2.3.4:5678")
        #expect(Endpoint("1.2.3.4:5678") == endpoint)
        #expect(IPv4Address("255.255.255.255")?.value == 0xFFFF_FFFF)
        #expect(IPv4Address.loopback.bytes == [127, 0, 0, 1])
        #expect(IPv4Address(bytes: [192, 0, 2, 1]) == IPv4Address(0xC000_0201))
    }

    @Test("IPv6 addresses print in RFC 5952 form", arguments: [
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:1234:5678:11:2233:4455:6677", "2001:db8:1234:5678:11:2233:4455:6677"),
        ("0:0:0:0:0:0:0:0", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),  // a single zero group is not compressed
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),  // the longest run wins
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  // first of equal runs wins
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
        ("FE80::ABCD", "fe80::abcd"),
    ])
    func ipv6Text(input: String, canonical: String) throws {
        let address = try #require(IPv6Address(input))
        #expect(address.description == canonical)
        #expect(IPv6Address(canonical) == address)
    }

    @Test("IPv6 endpoints use brackets")
    func ipv6Endpoint() throws {
        let endpoint = try #require(Endpoint("[2001:db8::1]:443"))
        #expect(endpoint.port == 443)
        #expect(endpoint.host == .v6(IPv6Address(groups: [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1])!))
        #expect(endpoint.description == "[2001:db8::1]:443")
        #expect(IPAddress("::1") == .v6(.loopback))
        #expect(IPAddress("127.0.0.1") == .v4(.loopback))
    }

    @Test("malformed text is refused", arguments: [
        "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "01234.1.1.1", "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:-1",
        ":80", "1.2.3.4:8a", "[::1:80", "::1:80", "[1::2::3]:80", "[12345::]:1", "[1:2:3:4:5:6:7:8:9]:1",
        "[1:2:3:4:5:6:7::8]:1", "[::g]:1", "[:::]:1", "[::1%eth0]:1", "[1.2.3.4]:5",
    ])
    func malformed(text: String) {
        #expect(Endpoint(text) == nil)
    }
}
