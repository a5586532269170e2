import WireFormat
import ZeroMQ

/// Reads one mesh's events from the broker's tap: a SUB socket on its own thread, opening each sealed event
/// with the mesh's ``TapKey``.
public enum TapSubscriber {
    /// Subscribes to `endpoint` for the mesh of `key` (all kinds of event, or those in `kinds`) and calls `onEvent` for each
    /// event until it returns false or the task is cancelled. Messages that do not open are passed to
    /// `onMalformed` and skipped.
    public static func run(
        endpoint: String, key: TapKey, kinds: [TapKind]? = nil,
        onEvent: @escaping @Sendable (TapEvent) -> Bool,
        onMalformed: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws {
        let loop = SocketLoop<Never>(name: "tap-subscriber")
        try await loop.run {
            try SubscriberHandler(endpoint: endpoint, key: key, kinds: kinds, stop: loop.stop, onEvent: onEvent, onMalformed: onMalformed)
        }
    }
}

final class SubscriberHandler: SocketLoopHandler {
    typealias Command = Never

    private let subscriber: ZMQSocket
    private let key: TapKey
    private let stop: @Sendable () -> Void
    private let onEvent: @Sendable (TapEvent) -> Bool
    private let onMalformed: @Sendable (String) -> Void

    init(
        endpoint: String, key: TapKey, kinds: [TapKind]?, stop: @escaping @Sendable () -> Void,
        onEvent: @escaping @Sendable (TapEvent) -> Bool, onMalformed: @escaping @Sendable (String) -> Void
    ) throws {
        self.key = key
        subscriber = try ZMQSocket(ZMQContext(), .subscriber)
        try subscriber.setMaxMessageSize(1 << 20)
        for prefix in kinds.map({ $0.map { key.prefix($0) } }) ?? [key.prefix()] {
            try subscriber.subscribe(Array(prefix.utf8))
        }
        try subscriber.connect(endpoint)
        self.stop = stop
        self.onEvent = onEvent
        self.onMalformed = onMalformed
    }

    var sockets: [ZMQSocket] { [subscriber] }
    var nextTick: ContinuousClock.Instant? { nil }

    func readable(socketAt index: Int) {
        while let frames = try? subscriber.receive() {
            guard frames.count == 2 else {
                onMalformed("tap message with \(frames.count) frames (expected topic + event)")
                continue
            }
            do {
                if !onEvent(try key.open(frames[1])) { return stop() }
            } catch {
                onMalformed("\(error)")
            }
        }
    }

    func handle(_ command: Never) {}
    func tick(now: ContinuousClock.Instant) {}
    func shutdown() { subscriber.close() }
}
