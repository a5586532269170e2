import ChildProcess
import Foundation
import Testing

/// The preload shim's own suite (Tests/shim/run.sh): real programs — python3, curl, redis, iperf3, nginx — with
/// the shim preloaded against a fake node, on loopback in a private network namespace.
@Suite("Preload shim with real programs")
struct ShimHarnessTests {
    static let runner = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../shim/run.sh").standardizedFileURL.path

    @Test("every shim test passes")
    func harness() throws {
        let result = try ChildProcess.run(["bash", Self.runner], timeout: .seconds(600))
        let summary = result.standardOutput.split(separator: "\n").last.map(String.init) ?? ""
        #expect(result.status == 0, "\(result.standardOutput)\n\(result.standardError)")
        #expect(summary.hasSuffix(" 0 failed") && !summary.hasPrefix("0 passed"), "summary: \(summary)")
    }
}
