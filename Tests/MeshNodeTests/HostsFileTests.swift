import Foundation
import Logging
import Testing
import WireFormat

@testable import MeshNode

/// The hosts file the app reads instead of asking the node: it follows the node's table push by push, and says so
/// whenever the table cannot answer, so a lookup never reads a stale table.
@Suite("Hosts file: the node's table, written out for the app")
struct HostsFileTests {
    func push(_ names: MeshNames, _ kind: Boxermesh_V1_MembershipUpdate.Kind, _ version: UInt64, _ members: [Member]) {
        #expect(names.receive(ControlMessage.with { $0.body = .membershipUpdate(update(kind, version, members)) }))
    }

    /// The mesh's lines, or nil when the file says the table is not in step (or cannot be read).
    func meshLines(_ hosts: HostsFile) -> [String]? {
        guard let text = try? String(contentsOfFile: hosts.path, encoding: .utf8),
            text.hasPrefix(String(decoding: HostsFile.header, as: UTF8.self))
        else { return nil }
        return Array(text.split(separator: "\n").map(String.init).prefix { $0 != HostsFile.systemMarker }.dropFirst())
    }

    /// The file behind `path` (device and inode), or nil when there is none.
    func identity(_ path: String) -> [UInt]? {
        var info = stat()
        return stat(path, &info) == 0 ? [UInt(info.st_dev), UInt(info.st_ino)] : nil
    }

    @Test("in step from the snapshot, rewritten on each join and leave, not in step when the table loses step or is forgotten, gone once closed")
    func followsTheTable() throws {
        let system = FileManager.default.temporaryDirectory.appendingPathComponent("hosts-\(UUID())").path
        try "127.0.0.1\tlocalhost\n".write(toFile: system, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: system) }
        let hosts = try #require(HostsFile(systemPath: system))
        let names = MeshNames(logger: Logger(label: "test"), hosts: hosts)

        #expect(meshLines(hosts) == nil, "not in step before the first snapshot")
        #expect(try String(contentsOfFile: hosts.path, encoding: .utf8).hasSuffix("\(HostsFile.systemMarker)\n127.0.0.1\tlocalhost\n"))
        push(names, .snapshot, 1, [member("beta", 2), member("alpha", 1)])
        #expect(meshLines(hosts) == ["100.64.0.1\talpha", "100.64.0.2\tbeta"])
        #expect(try String(contentsOfFile: hosts.path, encoding: .utf8).hasSuffix("\(HostsFile.systemMarker)\n127.0.0.1\tlocalhost\n"))
        push(names, .join, 2, [member("gamma", 3)])
        push(names, .leave, 3, [member("alpha", 1)])
        #expect(meshLines(hosts) == ["100.64.0.2\tbeta", "100.64.0.3\tgamma"])
        push(names, .join, 5, [member("delta", 4)])  // version 4 missed: the table forgets
        #expect(meshLines(hosts) == nil)
        push(names, .snapshot, 5, [member("beta", 2), member("delta", 4)])
        #expect(meshLines(hosts) == ["100.64.0.2\tbeta", "100.64.0.4\tdelta"])
        names.forget()
        #expect(meshLines(hosts) == nil)
        push(names, .snapshot, 6, [member("beta", 2)])
        #expect(meshLines(hosts) == ["100.64.0.2\tbeta"])
        let file = try #require(identity(hosts.path))
        hosts.close()  // the node is done: a push still on its way writes nothing
        push(names, .join, 7, [member("epsilon", 5)])
        // Gone, or its descriptor number already reused by a test running beside this one: not our file either way.
        #expect(identity(hosts.path).map { $0 != file } ?? true)
    }
}
