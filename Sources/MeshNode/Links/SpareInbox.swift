import Glibc
import Synchronization
import WireFormat
import ZeroMQ

/// The accepting side of spare links (``SparePool`` is the connecting side's): each is held, unread, until the
/// connecting node claims it or closes it; one thread polls them all and hands each on as soon as it has
/// something to say.
final class SpareInbox: Sendable {
    /// A spare link a peer made to us (its `via` is the peer's public endpoint: the peer port our app sees).
    typealias Held = SparePool.Spare

    /// How many spare links this node holds for all its peers together; more are refused.
    let capacity: Int
    private let loop: SocketLoop<Held>
    private let count = Atomic<Int>(0)

    init(capacity: Int = 64) {
        self.capacity = capacity
        loop = SocketLoop(name: "spare-inbox") { orphans in for held in orphans { close(held.fd) } }
    }

    /// Whether another spare link would be held (the peer asks before it punches one).
    var hasRoom: Bool { count.load(ordering: .relaxed) < capacity }

    /// Holds `spare` until it becomes readable: a claim, or the peer closed it.
    func hold(_ spare: Held) {
        count.add(1, ordering: .relaxed)
        if !loop.post(spare) { count.subtract(1, ordering: .relaxed) }
    }

    /// Polls the held links until cancelled; `ready` gets each one that became readable (and owns it from then on).
    func run(ready: @escaping @Sendable (Held) -> Void) async throws {
        try await loop.run { [self] in
            SpareInboxLoop(ready: { held in
                self.count.subtract(1, ordering: .relaxed)
                ready(held)
            })
        }
    }
}

/// ``SpareInbox``'s thread: nothing but plain descriptors to poll.
private final class SpareInboxLoop: SocketLoopHandler {
    typealias Command = SpareInbox.Held

    private let ready: @Sendable (SpareInbox.Held) -> Void
    private var held: [SpareInbox.Held] = []

    init(ready: @escaping @Sendable (SpareInbox.Held) -> Void) { self.ready = ready }

    var sockets: [ZMQSocket] { [] }
    var descriptors: [PolledDescriptor] { held.map { PolledDescriptor(fd: $0.fd, events: Int16(POLLIN)) } }
    var nextTick: ContinuousClock.Instant? { nil }
    func tick(now: ContinuousClock.Instant) {}
    func readable(socketAt index: Int) {}

    func handle(_ spare: SpareInbox.Held) { held.append(spare) }

    func ready(descriptor: Int32, events: Int16) {
        guard let index = held.firstIndex(where: { $0.fd == descriptor }) else { return }
        ready(held.remove(at: index))
    }

    func shutdown() {
        for spare in held { close(spare.fd) }
        held = []
    }
}
