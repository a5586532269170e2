import FoundationEssentials
import Glibc
import Synchronization
import WireFormat

/// The /etc/hosts a supervised app reads: the mesh's names and addresses first (so a mesh name wins), then the
/// system's own file. Go's and musl's resolvers read /etc/hosts themselves; the supervisor gives them this file
/// instead (the root file system stays untouched: a function's is read-only). It is written in the node's
/// temporary directory and rewritten when the mesh changed, with a new modification time, so a resolver that
/// re-reads on a changed mtime or size (Go) sees names that joined later.
final class HostsFile: Sendable {
    /// Where the file is written.
    let path: String
    private let systemPath: String
    private let session: MeshSession
    /// The last content written, and when the mesh was last asked.
    private let state = Mutex<(content: String?, asked: ContinuousClock.Instant?)>((nil, nil))

    /// How long one answer from the broker serves: a burst of lookups asks once.
    static let freshness = Duration.milliseconds(500)

    init(session: MeshSession, directory: String, systemPath: String = "/etc/hosts") {
        self.session = session
        self.systemPath = systemPath
        path = "\(directory)/boxer-mesh-hosts-\(getpid())"
    }

    /// The file, up to date within ``freshness``. If the broker cannot answer, the last file (or one with this
    /// node alone) serves.
    func current() async -> String {
        let stale = state.withLock { state in
            state.content == nil || state.asked.map { ContinuousClock.now - $0 > Self.freshness } ?? true
        }
        guard stale else { return path }
        state.withLock { $0.asked = .now }
        let members = (try? await session.members()) ?? [session.welcome.self_p]
        let system = (try? String(contentsOfFile: systemPath, encoding: .utf8)) ?? ""
        let content = Self.content(members: members.map { ($0.name, $0.ipv4) }, system: system)
        let changed = state.withLock { state in
            defer { state.content = content }
            return state.content != content
        }
        if changed { write(content) }
        return path
    }

    /// Writes a new file and renames it into place: a reader sees the old file or the new one, never half.
    private func write(_ content: String) {
        let temporary = "\(path).\(UInt32.random(in: 0...UInt32.max))"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(content.utf8), attributes: [.posixPermissions: 0o644]) else {
            return
        }
        if rename(temporary, path) != 0 { unlink(temporary) }
    }

    /// Removes the file (the node is done).
    func remove() { unlink(path) }

    /// The file's text: one line per member, then the system's file.
    static func content(members: [(name: String, address: IPv4Address)], system: String) -> String {
        let mesh = members.sorted { $0.name < $1.name }.map { "\($0.address)\t\($0.name)\n" }.joined()
        return "# boxer-mesh: the mesh's names\n\(mesh)# the system's /etc/hosts\n\(system)"
    }
}
