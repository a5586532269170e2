import Foundation
import MeshLab
import Testing

/// The node and unmodified apps inside function hosts that model 512 MB Lambda functions (`lab up
/// --function-memory 512`): uid 65534 without capabilities, 0.29 of a CPU, a read-only root, a private /tmp,
/// a 600 Mbit/s link.
@Suite(
    "The mesh inside Lambda-sized functions", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, cgroups, iptables"))
struct FunctionLabTests {
    @Test("redis-benchmark completes SET and GET against redis-server, both under boxer-mesh node in 512 MB functions")
    func redisIn512MBFunctions() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "fla", functionMemory: 512) { mesh in
            let server = try mesh.redisServer(1)
            defer { server.kill(SIGTERM) }
            let (bench, output) = try mesh.redisBenchmark(from: 2)
            print("redis-benchmark between two 512 MB functions:\n\(output)\nnode log:\n\(bench.standardError)")
            // The node and its app run as the function's user.
            let app = try FileManager.default.contentsOfDirectory(atPath: "/proc").first { pid in
                let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
                // pid (comm) state ppid …: the parent's pid is the second field after the command's ")".
                return stat.split(separator: ")").last?.split(separator: " ").dropFirst().first == "\(server.pid)"
            }
            for pid in [String(server.pid), try #require(app, "redis-server's pid")] {
                let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
                let uid = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }
                #expect(uid == "Uid:\t65534\t65534\t65534\t65534", "\(pid): \(uid ?? "no Uid")")
            }
            print("redis-server's node log:\n\(server.standardError)")
        }
    }
}
