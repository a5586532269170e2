import CNodeSupport
import Glibc
import Synchronization
import WireFormat

/// The mesh's names as a file in the hosts format, which the app reads instead of asking the node: the preload shim
/// answers a lookup from it (its path in `BOXER_MESH_HOSTS`), and a supervised app's own resolver (Go's, musl's)
/// reads it as /etc/hosts. The mesh's names and addresses come first (so a mesh name wins), then the system's own
/// file. It is replaced whenever the membership the broker pushes changes, so a name that left stops resolving as
/// soon as the node knows, and Go, which re-reads the file when its mtime or size changed, sees names that joined
/// later. While the node's table is not in step with the broker, the file says so in its first line (and holds the
/// system's part alone): lookups then ask the node, which waits for the table.
///
/// Every node rewrites it on every join and leave in the mesh, so it lives in memory, never on a disk: each version
/// is a new memfd, put in place by dup2 onto one descriptor number of the node, and the app opens it as
/// `/proc/<node>/fd/<number>` (a reader that opened the old one keeps reading a whole old version). No file of the
/// system is changed (a function's root is read-only), and a change costs what copying its bytes costs: each
/// member's line is formatted once, and kept in name order as members come and go.
final class HostsFile: Sendable {
    /// The app's environment variable that names the file.
    static let environmentVariable = "BOXER_MESH_HOSTS"
    /// The first line while the file holds the mesh's names, and while it does not.
    static let header = Array("# boxer-mesh: the mesh's names\n".utf8)
    static let notInStep = Array("# boxer-mesh: not in step with the broker; ask the node\n".utf8)
    /// Where the mesh's part of the file ends (the shim reads no further).
    static let systemMarker = "# the system's /etc/hosts"

    /// Where the app opens the file.
    let path: String
    /// The node's descriptor that holds the current version.
    private let fd: Int32
    /// The marker line and the system's /etc/hosts, read once: a function's root file system does not change.
    private let tail: [UInt8]

    private struct State {
        /// Each member's line, by name (the order of the file); nil: not in step.
        var lines: [(name: String, line: [UInt8])]?
        /// Set by ``close()``: a push that comes after (the control client's last) writes nothing.
        var closed = false
    }

    private let state = Mutex(State())

    /// Nil when the kernel gives no memfd.
    init?(systemPath: String = "/etc/hosts") {
        tail = Array("\(Self.systemMarker)\n".utf8) + (ReadOnlyFile(systemPath)?.contents ?? [])
        guard let first = Self.memoryFile(Self.notInStep + tail) else { return nil }
        fd = first
        path = "/proc/\(getpid())/fd/\(fd)"
    }

    /// A complete table: the file holds exactly `members`.
    func replace(with members: [Member]) {
        update { $0 = members.map { (name: $0.name, line: Self.line($0)) }.sorted { $0.name < $1.name } }
    }

    /// `member` joined.
    func insert(_ member: Member) {
        update { lines in
            guard lines != nil else { return }
            lines!.insert((name: member.name, line: Self.line(member)), at: Self.removing(member.name, from: &lines!))
        }
    }

    /// `member` left.
    func remove(_ member: Member) {
        update { lines in
            guard lines != nil else { return }
            _ = Self.removing(member.name, from: &lines!)
        }
    }

    /// The node's table is not in step: the file says so until the next ``replace(with:)``.
    func clear() {
        update { $0 = nil }
    }

    /// The node is done: the file is gone, and a push still on its way writes nothing.
    func close() {
        state.withLock { state in
            state.closed = true
            Glibc.close(fd)
        }
    }

    /// Changes the lines and puts the new version in place, under the lock: versions replace each other in order.
    private func update(_ change: (inout [(name: String, line: [UInt8])]?) -> Void) {
        state.withLock { state in
            guard !state.closed else { return }
            change(&state.lines)
            var bytes = state.lines == nil ? Self.notInStep : Self.header
            bytes.reserveCapacity(bytes.count + (state.lines?.count ?? 0) * 32 + tail.count)
            for entry in state.lines ?? [] { bytes += entry.line }
            bytes += tail
            guard let next = Self.memoryFile(bytes) else {
                // No memory for it: an empty file, which the shim takes as "ask the node".
                _ = ftruncate(fd, 0)
                return
            }
            dup2(next, fd)  // atomic: a reader opens the old version or the new one
            Glibc.close(next)
        }
    }

    /// A new memfd holding `bytes`, or nil.
    private static func memoryFile(_ bytes: [UInt8]) -> Int32? {
        let fd = boxer_memory_file("boxer-mesh-hosts")
        guard fd >= 0 else { return nil }
        guard writeAll(bytes, to: fd) else {
            Glibc.close(fd)
            return nil
        }
        return fd
    }

    /// Removes `name`'s line from `lines` (kept by name), if there is one; returns where it was, or would go.
    private static func removing(_ name: String, from lines: inout [(name: String, line: [UInt8])]) -> Int {
        var low = 0, high = lines.count
        while low < high {
            let middle = (low + high) / 2
            if lines[middle].name < name { low = middle + 1 } else { high = middle }
        }
        if low < lines.count, lines[low].name == name { lines.remove(at: low) }
        return low
    }

    private static func line(_ member: Member) -> [UInt8] { Array("\(member.ipv4)\t\(member.name)\n".utf8) }
}
