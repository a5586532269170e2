import Logging
import ServiceLifecycle
import WireFormat
import ZeroMQ

/// What the relay listens on and how much memory it may hold.
public struct RelayConfiguration: Sendable {
    /// ZeroMQ ROUTER endpoint the nodes' relay DEALERs connect to.
    public var endpoint = "tcp://0.0.0.0:7702"
    /// Relayed bytes the broker may hold at once, all connections together: each open connection reserves
    /// 2 × its window from this budget until it ends, and a node never has more than its window unacknowledged
    /// per direction (the relay resets one that tries). An open that finds too little left is refused.
    public var memoryBudget = 256 << 20
    /// Each connection's window per direction while the budget has room for it; less once it fills up.
    public var maximumWindow = 1 << 20
    /// Below this the budget counts as full: new relayed connections are refused.
    public var minimumWindow = 64 << 10
    /// A new connection's two windows take at most this fraction (1/N) of the budget still free, so windows shrink
    /// gradually as connections pile up instead of the first ones taking it all: with the defaults, the first 64
    /// connections get full windows and 242 fit at once before an open is refused.
    public var windowShare = 64
    /// Bytes per node that libzmq reads ahead of the relay before it stops reading that node's TCP connection:
    /// the most a node that ignores its windows can make the broker hold until the relay resets it.
    public var receiveAheadBytes = 4 << 20

    /// ``receiveAheadBytes`` as libzmq counts it, in messages (of at most one relay frame each).
    var receiveHighWaterMark: Int32 { Int32(max(1, receiveAheadBytes / RelayFrame.maximumFrameSize)) }
    /// Payload capture: nil (the default) publishes nothing and opens no capture socket at all.
    public var capture: RelayCaptureConfiguration?

    public init() {}

    /// The window for a new connection when `free` bytes of the budget are left: the full one while the budget has
    /// room, then a share of what is left, in whole pages; nil when that is below the minimum.
    public func window(free: Int) -> Int? {
        let window = min(maximumWindow, free / 2 / max(1, windowShare) / 4096 * 4096)
        return window >= minimumWindow ? window : nil
    }
}

/// The broker's relay: forwards RelayFrames between the two nodes of each relayed connection, on its own
/// ZeroMQ ROUTER and thread (a heavy relay never delays the control plane). Per-connection credit windows,
/// checked here, keep its memory within ``RelayConfiguration/memoryBudget`` however many connections there are
/// and however slow their readers.
public struct Relay: Service {
    let configuration: RelayConfiguration
    let directory: RelayDirectory
    let logger: Logger
    let onReady: @Sendable (String) -> Void

    public init(
        configuration: RelayConfiguration, directory: RelayDirectory, logger: Logger,
        onReady: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.directory = directory
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        RelayAllocator.tune()
        let loop = SocketLoop<Never>(name: "relay")
        let (configuration, directory, logger, onReady) = (configuration, directory, logger, onReady)
        try await cancelWhenGracefulShutdown {
            try await loop.run {
                let handler = try RelayHandler(configuration: configuration, directory: directory, logger: logger)
                onReady(handler.router.lastEndpoint)
                return handler
            }
        }
    }
}
