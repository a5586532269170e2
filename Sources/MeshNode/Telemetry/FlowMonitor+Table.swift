import WireFormat

extension FlowMonitor {
    /// What the link manager learns of a followed connection's socket after the app has it.
    enum Change: Sendable, Equatable {
        /// The connection moved from the relay to `path` (direct or spliced); its RTT is the node's direct
        /// socket's (`rttCookie`), where it has one.
        case upgraded(path: Boxermesh_V1_Path, rttCookie: UInt64?)
        /// From now on the app's bytes are counted on the socket `cookie` of `path`, after `relayed` (the
        /// connection's relayed bytes before it).
        case follow(cookie: UInt64, path: Boxermesh_V1_Path, relayed: Bytes)
        /// The app holds the socket with this inode now.
        case handedOff(inode: UInt64)

        /// Bytes each way.
        struct Bytes: Sendable, Equatable {
            var sent: UInt64
            var received: UInt64
        }

        func apply(to flow: inout Flow) {
            switch self {
            case .upgraded(let path, let rttCookie):
                flow.path = path
                flow.rttCookie = rttCookie
            case .follow(let cookie, let path, let relayed):
                flow.cookie = cookie
                flow.rttCookie = cookie
                flow.path = path
                flow.preamble = FlowMonitor.preamble(path)
                flow.base = (relayed.sent, relayed.received)
            case .handedOff(let inode):
                flow.inode = inode
            }
        }
    }

    /// The connections followed, by the cookie of the socket their bytes are counted on, and changes that came
    /// before their connection was. The node tracks a connection only after the app has it, and a connection that
    /// moves at once (`--relay-splice` splices at once) may be upgraded, and its direct socket offered to the app,
    /// before that: such changes wait here for ``insert(_:)``.
    struct Table {
        var flows: [UInt64: Flow] = [:]
        private var early: [UInt64: (changes: [Change], at: ContinuousClock.Instant)] = [:]

        /// How long a change waits for its connection: one that never comes (its setup failed after the relay pump
        /// started) is dropped after this.
        static let earlyLimit = Duration.seconds(10)

        /// Follows `flow`, with what changed before it came.
        mutating func insert(_ flow: Flow) {
            var flow = flow
            for change in early.removeValue(forKey: flow.id)?.changes ?? [] { change.apply(to: &flow) }
            flows[flow.cookie] = flow
        }

        /// Applies `change` to connection `id`'s flow, or keeps it for the flow.
        mutating func amend(_ id: UInt64, _ change: Change, now: ContinuousClock.Instant) {
            if let key = flows.first(where: { $0.value.id == id })?.key, var flow = flows.removeValue(forKey: key) {
                change.apply(to: &flow)
                flows[flow.cookie] = flow
                return
            }
            early = early.filter { now - $0.value.at < Self.earlyLimit }
            early[id, default: ([], now)].changes.append(change)
        }
    }
}
