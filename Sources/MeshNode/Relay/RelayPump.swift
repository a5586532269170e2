import FoundationEssentials
import Glibc
import Logging
import WireFormat
import ZeroMQ

/// Every relayed connection of this node: frames from the broker's relay in, the app's loopback sockets and
/// (after an upgrade) direct sockets polled, credit and switch markers kept. It runs on the relay loop's thread
/// (``RelayLoop``) and does not block: its sockets are non-blocking, and the blocking steps of an upgrade (learn
/// an endpoint, punch) go out through ``RelayPumpEffects`` and come back as ``gathered(_:attempt:_:)`` and
/// ``punched(_:attempt:_:)``. Tests drive it directly, with fake effects and no broker (MeshNodeTests).
///
/// Fairness: poll is level-triggered and each ready socket gets a bounded turn (a few frames of ≤ 256 KiB), so a
/// heavy connection takes its turn like the others. Relayed bytes are not copied in this process: they are read
/// from the app's socket into the buffer libzmq sends, and written to it from the message libzmq received. Memory: a connection holds at most its window of relay bytes.
final class RelayPump {
    let options: RelayOptions
    let effects: RelayPumpEffects
    let logger: Logger
    let expectations: RelayExpectations
    /// The thread the pump belongs to (where it was made); loop-only methods check it in debug builds.
    private let owner = pthread_self()

    var streams: [UInt64: RelayStream] = [:]
    /// Which stream each polled descriptor (an app end or a direct socket) belongs to.
    var owners: [Int32: UInt64] = [:]
    /// Our relayed opens, waiting for the broker's open.
    var opening: [UInt64: (context: RelayStreamContext, deadline: ContinuousClock.Instant, deliver: RelayExpectations.Deliver)] = [:]
    var attached = false
    /// Since when heartbeats go unanswered (nil while the broker answers): relayed connections end if it stays so.
    var brokerSilentSince: ContinuousClock.Instant?
    var nextHello = ContinuousClock.now
    /// Copy buffer for direct links (app ↔ direct socket).
    var scratch = [UInt8](repeating: 0, count: RelayFrame.maximumData)

    /// Frames read from one app socket per turn, sent as one message.
    static let framesPerTurn = 4

    init(options: RelayOptions, effects: RelayPumpEffects, expectations: RelayExpectations, logger: Logger) {
        self.options = options
        self.effects = effects
        self.expectations = expectations
        self.logger = logger
    }

    /// Loop-only code calls this first: in debug builds, it stops the node when called from another thread.
    func assertOnLoop(_ function: StaticString = #function) {
        assert(pthread_equal(owner, pthread_self()) != 0, "RelayPump.\(function) ran off the relay loop's thread")
    }

    var descriptors: [PolledDescriptor] {
        var list: [PolledDescriptor] = []
        for stream in streams.values { list += stream.descriptors }
        return list
    }

    var nextTick: ContinuousClock.Instant? {
        var next = nextHello
        for entry in opening.values { next = min(next, entry.deadline) }
        if let silent = brokerSilentSince { next = min(next, silent + Timing.Wire.relayResume) }
        for stream in streams.values {
            if let at = stream.resumeBy { next = min(next, at) }
            if let at = stream.upgrade.next { next = min(next, at) }
            if let at = stream.upgrade.deadline { next = min(next, at) }
            if let at = stream.handoff.next { next = min(next, at) }
        }
        return next
    }

    func tick(now: ContinuousClock.Instant) {
        assertOnLoop()
        if now >= nextHello {
            var hello = Boxermesh_V1_RelayHello()
            hello.session = effects.session()
            send(RelayFrame.with(0, .hello(hello)))
            nextHello = now + Timing.Wire.relayHello
            for stream in streams.values {
                logger.trace("relay stream", metadata: [
                    "connection": "\(stream.id)", "credit": "\(stream.credit)", "sent": "\(stream.sentOnRelay)",
                    "received": "\(stream.receivedOnRelay)", "queued": "\(stream.queued)", "owed": "\(stream.creditOwed)",
                    "outbound": "\(stream.outbound)", "inbound": "\(stream.inbound)", "descriptors": "\(stream.descriptors)"])
            }
        }
        for (id, entry) in opening where entry.deadline <= now {
            opening[id] = nil
            entry.deliver(.failure(SocketError(ETIMEDOUT, "the relay did not open the connection in time")))
        }
        upgradeTick(now: now)
        handoffTick(now: now)
        resumeTick(now: now)
    }

    /// The node stops: whoever waits hears so, every relayed connection is reset.
    func shutdown() {
        let stopping = SocketError(ENETDOWN, "the node is stopping")
        for entry in opening.values { entry.deliver(.failure(stopping)) }
        opening = [:]
        expectations.close(stopping)
        for stream in streams.values { abort(stream, reason: "the node is stopping", notify: true) }
    }

    // MARK: Commands

    func handle(_ command: RelayCommand) {
        assertOnLoop()
        switch command {
        case .open(let id, let context, let deliver):
            opening[id] = (context, .now + Timing.Choice.relayOpen, deliver)
            send(RelayFrame.with(id, .open(.init())))
        case .giveUp(let id, let reason):
            send(RelayFrame.with(id, .rst(.with { $0.reason = reason })))
        case .gathered(let id, let attempt, let result):
            gathered(id, attempt: attempt, result)
        case .punched(let id, let attempt, let result):
            punched(id, attempt: attempt, result)
        case .session(let event):
            sessionChanged(event)
        case .handoffAnswered(let result):
            handoffAnswered(result)
        case .handoffTurn(let id):
            handoffTurn(id)
        }
    }

    // MARK: Relay frames

    /// One frame from the broker's relay.
    func received(_ message: ZMQMessage) {
        assertOnLoop()
        let header: RelayFrameHeader
        do {
            header = try RelayFrameHeader(scanning: message.bytes)
        } catch {
            return logger.warning("dropped a malformed relay frame: \(error)")
        }
        // Only the small frames are decoded whole; data is written to the app straight from the message.
        var frame: [UInt8] { [UInt8](message.bytes) }
        let id = header.connectionID
        switch header.kind {
        case .hello:
            if !attached {
                logger.debug("attached to the relay at \(options.endpoint)")
                effects.attached()
            }
            attached = true
            sendResumes()
        case .open:
            let window = (try? RelayFrame(frame: frame))?.open.window ?? 0
            opened(id, window: Int(window))
        case .data:
            guard let stream = streams[id] else {
                return send(RelayFrame.with(id, .rst(.with { $0.reason = "no such relayed connection" })))
            }
            guard stream.inbound == .relay, stream.queued + header.payload.count <= stream.window else {
                return abort(stream, reason: "the peer broke the relay protocol (data past its window or end)", notify: true)
            }
            stream.pending.append((message, header.payload))
            stream.queued += header.payload.count
            stream.receivedOnRelay += UInt64(header.payload.count)
            writeApp(stream)
        case .credit(let credit):
            guard let stream = streams[id] else { return }
            do {
                try stream.resend.acknowledge(Int(credit))
            } catch {
                abort(stream, reason: "the peer broke the relay protocol: \(error)", notify: true)
            }
        case .fin:
            guard let stream = streams[id] else { return }
            guard stream.inbound == .relay else {
                return abort(stream, reason: "the peer broke the relay protocol (fin after its end)", notify: true)
            }
            stream.move(RelayStream.Inbound.ending)
            writeApp(stream)
        case .switchOffset(let offset):
            guard let stream = streams[id] else { return }
            guard stream.direct != nil, stream.inbound == .relay, offset == stream.receivedOnRelay else {
                return abort(stream, reason: "the peer switched to a direct link this node does not hold", notify: true)
            }
            stream.move(.draining(until: offset))
            writeApp(stream)
        case .rst:
            let reset = (try? RelayFrame(frame: frame))?.rst ?? .init()
            if reset.unknown, relayLostState(id) { return }
            let reason = reset.reason
            let error = SocketError(ECONNREFUSED, "the relay reset the connection: \(reason)")
            if let entry = opening.removeValue(forKey: id) { entry.deliver(.failure(error)) }
            if let entry = expectations.take(id) { entry.deliver(.failure(error)) }
            if id == 0 {
                attached = false
                logger.warning("the relay refused this node: \(reason)")
            }
            if let stream = streams[id] {
                logger.debug("relayed connection reset by the peer", metadata: ["connection": "\(id)", "reason": "\(reason)"])
                abort(stream, reason: reason, notify: false)
            }
        case .punch:
            guard let stream = streams[id], let decoded = try? RelayFrame(frame: frame) else { return }
            punchSignal(stream, decoded.punch)
        case .resume:
            guard let stream = streams[id] else {
                return send(RelayFrame.with(id, .rst(.with { $0.reason = "no such relayed connection to resume" })))
            }
            guard let decoded = try? RelayFrame(frame: frame), case .resume(let resume) = decoded.body else {
                return abort(stream, reason: "a malformed resume", notify: true)
            }
            peerResumed(stream, resume)
        }
    }

    /// The broker opened `id`: hand a fresh loopback socket to whoever waits for it.
    private func opened(_ id: UInt64, window: Int) {
        let waiter: (context: RelayStreamContext, deliver: RelayExpectations.Deliver)
        if let entry = opening.removeValue(forKey: id) {
            waiter = (entry.context, entry.deliver)
        } else if let entry = expectations.take(id) {
            waiter = (entry.context, entry.deliver)
        } else {
            return send(RelayFrame.with(id, .rst(.with { $0.reason = "the accepting node no longer waits for this connection" })))
        }
        guard window > 0 else {
            send(RelayFrame.with(id, .rst(.with { $0.reason = "no window" })))
            return waiter.deliver(.failure(SocketError(EPROTO, "the relay opened the connection without a window")))
        }
        let pair: (app: Int32, node: Int32)
        do {
            pair = try RelaySockets.loopbackPair()
        } catch {
            send(RelayFrame.with(id, .rst(.with { $0.reason = "the node cannot make a socket: \(error)" })))
            return waiter.deliver(.failure(error))
        }
        let stream = RelayStream(id: id, fd: pair.node, window: window, context: waiter.context)
        streams[id] = stream
        owners[pair.node] = id
        // A first attempt that splices goes at once; a punch gets the NATs a moment.
        if upgrades && stream.context.initiator {
            scheduleUpgrade(stream, after: splices(stream, attempt: 1) ? .zero : Timing.Choice.upgradeFirst)
        }
        waiter.deliver(.success(pair.app))
    }

    // MARK: Sockets

    /// A polled descriptor is ready.
    func ready(descriptor fd: Int32, events: Int16) {
        assertOnLoop()
        guard let id = owners[fd], let stream = streams[id] else { return }
        let readable = events & Int16(POLLIN | POLLHUP | POLLERR) != 0
        let writable = events & Int16(POLLOUT | POLLHUP | POLLERR) != 0
        if fd == stream.fd {
            if writable { writeApp(stream) }
            if readable, streams[id] != nil { readApp(stream) }
        } else if fd == stream.direct {
            if writable { writeDirect(stream) }
            if readable, streams[id] != nil { readDirect(stream) }
        }
    }

    /// App → peer: one frame within the credit (relay), or one buffer (direct link).
    func readApp(_ stream: RelayStream) {
        switch stream.outbound {
        case .relay where !stream.suspended: break
        case .direct: break
        default: return
        }
        if stream.outbound == .direct {
            guard stream.directOut.isEmpty, let direct = stream.direct else { return }
            switch copyOnce(from: stream.fd, to: direct) {
            case .copied(let left): stream.directOut = left
            case .sourceEOF:
                stream.move(RelayStream.Outbound.directEnded)
                Glibc.shutdown(direct, Int32(SHUT_WR))
            case .wouldBlock: break
            case .sourceFailed: return abort(stream, reason: "the app reset the connection", notify: true)
            case .destinationFailed: return abort(stream, reason: "the direct link failed", notify: true)
            }
            return finishIfDone(stream)
        }
        // Up to `framesPerTurn` frames while the app's socket has full frames for us, sent as one multipart
        // message: fewer polls and wakeups per byte, and still a bounded turn, so connections take turns fairly.
        var batch: [ZMQMessage] = []
        defer { if !batch.isEmpty { send(batch) } }
        for _ in 0..<Self.framesPerTurn {
            let capacity = min(stream.credit, RelayFrame.maximumData)
            guard capacity > 0 else { break }
            var outcome = IO.Outcome.wouldBlock
            let frame = Self.readDataFrame(connectionID: stream.id, capacity: capacity) { buffer in
                outcome = IO.read(stream.fd, into: buffer)
                if case .moved(let count) = outcome { return count }
                return 0
            }
            switch outcome {
            case .moved(let count):
                guard let frame else { return }
                stream.resend.sent(frame.copy(), payload: (frame.count - count)..<frame.count)
                batch.append(frame)
                if count < capacity { break }
                continue
            case .eof:
                stream.move(RelayStream.Outbound.relayEnded)
                batch.append(ZMQMessage(RelayFrame.with(stream.id, .fin(true)).frame()))
            case .wouldBlock: break
            case .failed:
                if !batch.isEmpty { send(batch) }
                batch = []
                return abort(stream, reason: "the app reset the connection", notify: true)
            }
            break
        }
        finishIfDone(stream)
    }

    /// Peer → app: relay bytes in order, then (after the switch marker) the direct link's.
    func writeApp(_ stream: RelayStream) {
        drain: while stream.pendingHead < stream.pending.count {
            let (frame, range) = stream.pending[stream.pendingHead]
            let outcome = IO.write(stream.fd, UnsafeRawBufferPointer(rebasing: frame.bytes[range]))
            switch outcome {
            case .moved(let count):
                stream.queued -= count
                stream.creditOwed += count
                guard count == range.count else {
                    stream.pending[stream.pendingHead].range = range.lowerBound + count..<range.upperBound
                    break drain
                }
                stream.pendingHead += 1
            case .wouldBlock, .eof: break drain
            case .failed: return abort(stream, reason: "the app closed the connection", notify: true)
            }
        }
        if stream.pendingHead == stream.pending.count, !stream.pending.isEmpty {
            stream.pending.removeAll(keepingCapacity: true)
            stream.pendingHead = 0
        } else if stream.pendingHead > 64 {
            stream.pending.removeFirst(stream.pendingHead)
            stream.pendingHead = 0
        }
        // Credit goes back in batches; the sender still holds ≥ 3/4 of its window meanwhile.
        // None while the relay is away: the resume tells the peer what its app took.
        if stream.creditOwed >= stream.window / 4, stream.inbound == .relay, !stream.suspended {
            send(RelayFrame.with(stream.id, .credit(UInt32(stream.creditOwed))))
            stream.creditSent += UInt64(stream.creditOwed)
            stream.creditOwed = 0
        }
        if stream.queued == 0 {
            if case .draining = stream.inbound { stream.move(RelayStream.Inbound.direct) }
            if !stream.directIn.isEmpty {
                let outcome = stream.directIn.bytes.withUnsafeBytes {
                    IO.write(stream.fd, UnsafeRawBufferPointer(rebasing: $0[stream.directIn.offset...]))
                }
                switch outcome {
                case .moved(let count): stream.directIn.offset += count
                case .wouldBlock, .eof: break
                case .failed: return abort(stream, reason: "the app closed the connection", notify: true)
                }
                if stream.directIn.isEmpty { stream.directIn = .init() }
            }
            if stream.inbound == .ending && stream.directIn.isEmpty {
                stream.move(RelayStream.Inbound.shut)
                Glibc.shutdown(stream.fd, Int32(SHUT_WR))
            }
        }
        finishIfDone(stream)
    }

    /// Direct link → app, after the switch.
    func readDirect(_ stream: RelayStream) {
        guard let direct = stream.direct, stream.inbound == .direct, stream.directIn.isEmpty else { return }
        switch copyOnce(from: direct, to: stream.fd) {
        case .copied(let left): stream.directIn = left
        case .sourceEOF:
            stream.move(RelayStream.Inbound.ending)
            return writeApp(stream)
        case .wouldBlock: break
        case .sourceFailed: return abort(stream, reason: "the peer reset the connection", notify: false)
        case .destinationFailed: return abort(stream, reason: "the app closed the connection", notify: true)
        }
        finishIfDone(stream)
    }

    enum CopyOutcome {
        /// Bytes moved; `left` holds what the destination did not take yet.
        case copied(left: RelayStream.Pending)
        case sourceEOF
        case wouldBlock
        case sourceFailed
        case destinationFailed
    }

    /// One read from `source` (≤ 256 KiB) written on to `destination` — the copy loop of an upgraded connection.
    private func copyOnce(from source: Int32, to destination: Int32) -> CopyOutcome {
        switch scratch.withUnsafeMutableBytes({ IO.read(source, into: $0) }) {
        case .moved(let count):
            switch scratch.withUnsafeBytes({ IO.write(destination, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }) {
            case .moved(let sent): return .copied(left: .init(bytes: sent == count ? [] : Array(scratch[sent..<count])))
            case .wouldBlock: return .copied(left: .init(bytes: Array(scratch[0..<count])))
            case .eof, .failed: return .destinationFailed
            }
        case .eof: return .sourceEOF
        case .wouldBlock: return .wouldBlock
        case .failed: return .sourceFailed
        }
    }

    func writeDirect(_ stream: RelayStream) {
        guard let direct = stream.direct, !stream.directOut.isEmpty else { return }
        let outcome = stream.directOut.bytes.withUnsafeBytes {
            IO.write(direct, UnsafeRawBufferPointer(rebasing: $0[stream.directOut.offset...]))
        }
        switch outcome {
        case .moved(let count): stream.directOut.offset += count
        case .wouldBlock, .eof: break
        case .failed: return abort(stream, reason: "the direct link failed", notify: true)
        }
        if stream.directOut.isEmpty { stream.directOut = .init() }
        finishIfDone(stream)
    }

    // MARK: Ending

    /// Both directions are over: close quietly (the app already read EOF and wrote its last byte).
    func finishIfDone(_ stream: RelayStream) {
        guard stream.finished, streams[stream.id] != nil else { return }
        forget(stream)
        close(stream.fd)
        if let direct = stream.direct { close(direct) }
    }

    /// Resets the connection: the app sees ECONNRESET; the peer hears rst on the relay (and an RST on the
    /// direct link, if there is one).
    func abort(_ stream: RelayStream, reason: String, notify: Bool) {
        guard streams[stream.id] != nil else { return }
        logger.debug("relayed connection reset", metadata: ["connection": "\(stream.id)", "reason": "\(reason)"])
        forget(stream)
        if notify { send(RelayFrame.with(stream.id, .rst(.with { $0.reason = reason }))) }
        RelaySockets.reset(stream.fd)
        if let direct = stream.direct { RelaySockets.reset(direct) }
    }

    func forget(_ stream: RelayStream) {
        streams[stream.id] = nil
        owners[stream.fd] = nil
        if let direct = stream.direct { owners[direct] = nil }
    }

    func send(_ frame: RelayFrame) { send([frame.frame()]) }

    /// Several encoded frames as one multipart message.
    func send(_ frames: [[UInt8]]) { send(frames.map { ZMQMessage($0) }) }

    func send(_ frames: [ZMQMessage]) { effects.send(frames) }

    /// A data frame whose payload `fill` reads (≤ `capacity` bytes) into a block that libzmq then takes over, so
    /// the payload is neither moved nor copied. A short read gives the unused end of the block back at once: a
    /// frame waits for its credit in the resend buffer, and a 1 KiB reply must not hold 256 KiB meanwhile.
    static func readDataFrame(
        connectionID: UInt64, capacity: Int, fill: (UnsafeMutableRawBufferPointer) -> Int
    ) -> ZMQMessage? {
        let size = RelayFrame.maximumDataHeader + capacity
        guard let block = malloc(size) else { return nil }
        guard let range = RelayFrame.writeDataFrame(
            connectionID: connectionID, into: UnsafeMutableRawBufferPointer(start: block, count: size), fill: fill)
        else {
            free(block)
            return nil
        }
        // Shrinking keeps the block where it is (glibc splits it); the pointer is taken from the result anyway.
        let kept = range.upperBound < size / 2 ? realloc(block, range.upperBound) ?? block : block
        return ZMQMessage(taking: kept, offset: range.lowerBound, count: range.count)
    }
}
