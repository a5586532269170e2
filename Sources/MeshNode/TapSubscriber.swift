import WireFormat
import ZeroMQ

/// Reads the broker's tap: a SUB socket on its own thread, decoding each [topic, TapEvent] message.
public enum TapSubscriber {
    /// Subscribes to `endpoint` for topics starting with `prefix` and calls `onEvent` for each event until it
    /// returns false or the task is cancelled. Malformed messages are passed to `onMalformed` and skipped.
    public static func run(
        endpoint: String, prefix: String,
        onEvent: @escaping @Sendable (_ topic: String, TapEvent) -> Bool,
        onMalformed: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws {
        let loop = SocketLoop<Never>(name: "tap-subscriber")
        try await loop.run {
            try SubscriberHandler(endpoint: endpoint, prefix: prefix, stop: loop.stop, onEvent: onEvent, onMalformed: onMalformed)
        }
    }
}

final class SubscriberHandler: SocketLoopHandler {
    typealias Command = Never

    private let subscriber: ZMQSocket
    private let stop: @Sendable () -> Void
    private let onEvent: @Sendable (String, TapEvent) -> Bool
    private let onMalformed: @Sendable (String) -> Void

    init(
        endpoint: String, prefix: String, stop: @escaping @Sendable () -> Void,
        onEvent: @escaping @Sendable (String, TapEvent) -> Bool, onMalformed: @escaping @Sendable (String) -> Void
    ) throws {
        subscriber = try ZMQSocket(ZMQContext(), .subscriber)
        try subscriber.setMaxMessageSize(1 << 20)
        try subscriber.subscribe(Array(prefix.utf8))
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
            let topic = String(decoding: frames[0], as: UTF8.self)
            do {
                if !onEvent(topic, try TapEvent(frame: frames[1])) { return stop() }
            } catch {
                onMalformed("\(error)")
            }
        }
    }

    func handle(_ command: Never) {}
    func tick(now: ContinuousClock.Instant) {}
    func shutdown() { subscriber.close() }
}
