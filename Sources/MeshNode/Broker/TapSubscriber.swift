import WireFormat
import ZeroMQ

/// Reads one mesh's events from the broker's tap: a SUB socket on its own thread, opening each sealed event
/// with the mesh's ``TapKey``.
public enum TapSubscriber {
    /// Subscribes to `endpoint` for the mesh of `key` (all kinds of event, or those in `kinds`) and calls `onEvent` for each
    /// event until it returns false or the task is cancelled. `onSubscribed` runs once, when the broker has answered
    /// every subscription: no event published after that is missed. Messages that do not open are passed to
    /// `onMalformed` and skipped.
    public static func run(
        endpoint: String, key: TapKey, kinds: [TapKind]? = nil,
        onSubscribed: @escaping @Sendable () -> Void = {},
        onEvent: @escaping @Sendable (TapEvent) -> Bool,
        onMalformed: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws {
        let loop = SocketLoop<Never>(name: "tap-subscriber")
        try await loop.run {
            try SubscriberHandler(
                endpoint: endpoint, key: key, kinds: kinds, stop: loop.stop, onSubscribed: onSubscribed, onEvent: onEvent,
                onMalformed: onMalformed)
        }
    }
}

final class SubscriberHandler: SocketLoopHandler {
    typealias Command = Never

    private let subscriber: ZMQSocket
    private let key: TapKey
    private let stop: @Sendable () -> Void
    /// The subscriptions the broker has not answered yet; `onSubscribed` runs when the last is.
    private var unanswered: Set<[UInt8]>
    private let onSubscribed: @Sendable () -> Void
    private let onEvent: @Sendable (TapEvent) -> Bool
    private let onMalformed: @Sendable (String) -> Void

    init(
        endpoint: String, key: TapKey, kinds: [TapKind]?, stop: @escaping @Sendable () -> Void,
        onSubscribed: @escaping @Sendable () -> Void, onEvent: @escaping @Sendable (TapEvent) -> Bool,
        onMalformed: @escaping @Sendable (String) -> Void
    ) throws {
        self.key = key
        subscriber = try ZMQSocket(ZMQContext(), .subscriber)
        try subscriber.setMaxMessageSize(1 << 20)
        let prefixes = (kinds.map { $0.map { key.prefix($0) } } ?? [key.prefix()]).map { Array($0.utf8) }
        for prefix in prefixes { try subscriber.subscribe(prefix) }
        try subscriber.connect(endpoint)
        unanswered = Set(prefixes)
        self.onSubscribed = onSubscribed
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
            guard !frames[1].isEmpty else {
                // The broker's answer to a subscription (ours, or another subscriber's to the same topic).
                if unanswered.remove(frames[0]) != nil, unanswered.isEmpty { onSubscribed() }
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
