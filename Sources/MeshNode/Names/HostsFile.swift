import Glibc
import Synchronization
import WireFormat

/// The mesh's names as a file in the hosts format, which the app reads instead of asking the node: the preload shim
/// answers a lookup from it (its path in `BOXER_MESH_HOSTS`), and a supervised app's own resolver (Go's, musl's)
/// reads it as /etc/hosts. The mesh's names and addresses come first (so a mesh name wins), then the system's own
/// file. It lives in the node's temporary directory (the root file system stays untouched: a function's is
/// read-only) and is replaced whenever the membership the broker pushes changes, so a name that left stops resolving
/// as soon as the node knows, and Go, which re-reads the file when its mtime or size changed, sees names that joined
/// later. While the node's table is not in step with the broker, there is no file: lookups then ask the node, which
/// waits for the table.
final class HostsFile: Sendable {
    /// The app's environment variable that names the file.
    static let environmentVariable = "BOXER_MESH_HOSTS"
    /// Where the file is written.
    let path: String
    /// The system's /etc/hosts, read once: a function's root file system does not change.
    private let system: String
    /// Where the mesh's part of the file ends (the shim reads no further).
    static let systemMarker = "# the system's /etc/hosts"
    /// Set by ``close()``: a push that comes after (the control client's last) writes nothing.
    private let closed = Mutex(false)

    init(directory: String, systemPath: String = "/etc/hosts") {
        path = "\(directory)/boxer-mesh-hosts-\(getpid())"
        system = ReadOnlyFile(systemPath)?.contents.map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Replaces the file with `members`, or removes it (nil: the node's table is not in step).
    func publish(_ members: [Member]?) {
        closed.withLock { closed in
            guard !closed else { return }
            write(members)
        }
    }

    /// Removes the file for good: the node is done.
    func close() {
        closed.withLock { closed in
            closed = true
            unlink(path)
        }
    }

    private func write(_ members: [Member]?) {
        guard let members else { return remove() }
        let content = Self.content(members: members.map { ($0.name, $0.ipv4) }, system: system)
        // A new file renamed into place: a reader sees the old file or the new one, never half. On failure, no
        // file rather than a stale one: lookups then ask the node.
        let temporary = "\(path).\(UInt32.random(in: 0...UInt32.max))"
        guard createFile(temporary, holding: Array(content.utf8), mode: 0o644), rename(temporary, path) == 0 else {
            unlink(temporary)
            return remove()
        }
    }

    /// No file: the table is not in step.
    private func remove() { unlink(path) }

    /// The file's text: one line per member, by name, then the system's file.
    static func content(members: [(name: String, address: IPv4Address)], system: String) -> String {
        let mesh = members.sorted { $0.name < $1.name }.map { "\($0.address)\t\($0.name)\n" }.joined()
        return "# boxer-mesh: the mesh's names\n\(mesh)\(systemMarker)\n\(system)"
    }
}
