import Testing
import WireFormat

@testable import MeshNode

/// Spare links' endpoints (``DirectPath/sparePunchPort()``) against a real reflector on 127.0.0.1, where no NAT stands
/// between: the reflector sees every local port kept, as a port-preserving NAT would.
@Suite("Spare links predict their endpoints where the NAT keeps ports", .timeLimit(.minutes(1)))
struct EndpointPredictionTests {
    @Test("after three endpoints learned in a row with their ports kept, spare links predict theirs; a failed prediction sends them back to the reflector")
    func predictsAfterThreeKept() async throws {
        try await TestReflector.with { reflector in
            let path = DirectPath(reflector: reflector.endpoint(.tcp), pool: BlockingPool(name: "test-predict", limit: 2))
            let first = try await path.sparePunchPort()
            #expect(!first.predicted && first.endpoint == Endpoint(IPv4Address.loopback, port: first.port))
            // Each use also learns the next warm endpoint in the background; three learned, the next spare predicts.
            var predicted: DirectPath.PunchPort?
            for _ in 0..<10 {
                let port = try await path.sparePunchPort()
                if port.predicted {
                    predicted = port
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            let port = try #require(predicted, "no spare endpoint was predicted")
            #expect(port.endpoint == Endpoint(IPv4Address.loopback, port: port.port))
            path.predictionFailed()
            #expect(try await !path.sparePunchPort().predicted)
        }
    }
}
