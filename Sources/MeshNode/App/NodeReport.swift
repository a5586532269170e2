import Synchronization
import WireFormat

/// What one ``Node/run(_:logger:)`` tells its caller beyond the exit status: who the node was, the links it handed
/// its app, why it left, and whether the app could not be started at all. Filled in as the run goes.
public final class NodeReport: Sendable {
    private let state = Mutex(State())

    private struct State {
        var member: Member?
        var links = LinkCounts()
        var leaveReason: String?
        var launchFailure: LaunchError?
    }

    public init() {}

    /// The name and address the broker gave the node; nil until it joined.
    public var member: Member? { state.withLock { $0.member } }
    /// The mesh connections handed to the app, counted when it ended.
    public var links: LinkCounts { state.withLock { $0.links } }
    /// What the node told the mesh when it left; nil if it never joined.
    public var leaveReason: String? { state.withLock { $0.leaveReason } }
    /// Why the app could not be started, if it could not.
    public var launchFailure: LaunchError? { state.withLock { $0.launchFailure } }

    func joined(as member: Member) { state.withLock { $0.member = member } }

    func left(_ reason: String, links: LinkCounts) {
        state.withLock {
            $0.leaveReason = reason
            $0.links = links
        }
    }

    func launchFailed(_ error: LaunchError) { state.withLock { $0.launchFailure = error } }
}

/// The mesh connections a node handed its app, by the path each started on.
public struct LinkCounts: Sendable, Equatable {
    /// Punched direct links.
    public var direct = 0
    /// Connections that started on the broker's relay.
    public var relayed = 0
    /// Relayed connections that moved to a direct link later (also counted in ``relayed``).
    public var upgraded = 0

    public init() {}
}
