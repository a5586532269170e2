import Foundation
import Logging
import Testing
import WireFormat

@testable import MeshNode

/// The hosts file the app reads instead of asking the node: it follows the node's table push by push, and is gone
/// whenever the table cannot answer, so a lookup never reads a stale file.
@Suite("Hosts file: the node's table, written out for the app")
struct HostsFileTests {
    func push(_ names: MeshNames, _ kind: Boxermesh_V1_MembershipUpdate.Kind, _ version: UInt64, _ members: [Member]) {
        #expect(names.receive(ControlMessage.with { $0.body = .membershipUpdate(update(kind, version, members)) }))
    }

    func meshLines(_ hosts: HostsFile) -> [String]? {
        guard let text = try? String(contentsOfFile: hosts.path, encoding: .utf8) else { return nil }
        return Array(text.split(separator: "\n").map(String.init).prefix { $0 != HostsFile.systemMarker }.dropFirst())
    }

    @Test("written at the snapshot, rewritten on each join and leave, removed when the table loses step or is forgotten, and for good once closed")
    func followsTheTable() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hosts-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let system = "\(directory)/system-hosts"
        try "127.0.0.1\tlocalhost\n".write(toFile: system, atomically: true, encoding: .utf8)
        let hosts = HostsFile(directory: directory, systemPath: system)
        let names = MeshNames(logger: Logger(label: "test"), hosts: hosts)

        #expect(meshLines(hosts) == nil, "no file before the first snapshot")
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
        hosts.close()  // the node is done: a push still on its way writes nothing
        push(names, .join, 7, [member("epsilon", 5)])
        #expect(meshLines(hosts) == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["system-hosts"], "no temporary file left")
    }
}
