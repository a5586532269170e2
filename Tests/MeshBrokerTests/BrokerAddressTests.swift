import MeshNode
import Testing

@Suite("Broker address parsing")
struct BrokerAddressTests {
    @Test("host, host:port, [v6]:port and tcp:// forms", arguments: [
        ("broker", "tcp://broker:7700"), ("203.0.113.10:7800", "tcp://203.0.113.10:7800"),
        ("tcp://10.0.0.1:7700", "tcp://10.0.0.1:7700"), ("[::1]:7701", "tcp://[::1]:7701"), ("[::1]", "tcp://[::1]:7700"),
    ])
    func valid(text: String, endpoint: String) throws {
        #expect(try BrokerAddress(parsing: text).controlEndpoint == endpoint)
    }

    @Test("bad forms say what is wrong", arguments: ["", "host:0", "host:99999", "host:x", "::1", "[::1", ":7700"])
    func invalid(text: String) {
        #expect(throws: BrokerAddressError.self) { try BrokerAddress(parsing: text) }
    }
}
