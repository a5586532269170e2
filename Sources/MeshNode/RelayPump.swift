import Foundation
import Logging
import WireFormat
import ZeroMQ

/// The relay's thread on a node: the DEALER to the broker's relay, and every relayed connection's sockets,
/// polled together. Nothing here blocks: sockets are non-blocking, and the blocking steps of an upgrade (STUN,
/// punching) run on threads of their own that post their results back.
///
/// Fairness: poll is level-triggered and each ready socket gets one read or write (≤ 64 KiB) per turn, so a heavy
/// connection takes its turn like the others. Memory: a connection holds at most its window of relay bytes.
final class RelayPump: SocketLoopHandler {
    typealias Command = RelayCommand

    let dealer: ZMQSocket
    let options: RelayOptions
    let session: MeshSession
    let logger: Logger
    let post: @Sendable (RelayCommand) -> Void
    let onUpgraded: @Sendable (UInt64, RelayStreamContext, Int32?) -> Void

    var streams: [UInt64: RelayStream] = [:]
    /// Which stream each polled descriptor (an app end or a direct socket) belongs to.
    var owners: [Int32: UInt64] = [:]
    var opening: [UInt64: (context: RelayStreamContext, deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Int32, Error>)] = [:]
    let expectations: RelayExpectations
    var attached = false
    /// Since when heartbeats go unanswered (nil while the broker answers): relayed connections end if it stays so.
    var brokerSilentSince: ContinuousClock.Instant?
    var nextHello = ContinuousClock.now
    /// Copy buffer for direct links (app ↔ direct socket).
    var scratch = [UInt8](repeating: 0, count: RelayFrame.maximumData)

    static let helloInterval = Duration.seconds(5)
    static let framesPerTurn = 4
    static let openTimeout = Duration.seconds(5)

    init(
        options: RelayOptions, session: MeshSession, logger: Logger, expectations: RelayExpectations,
        post: @escaping @Sendable (RelayCommand) -> Void, onUpgraded: @escaping @Sendable (UInt64, RelayStreamContext, Int32?) -> Void
    ) throws {
        self.options = options
        self.session = session
        self.logger = logger
        self.expectations = expectations
        self.post = post
        self.onUpgraded = onUpgraded
        dealer = try ZMQSocket(ZMQContext(), .dealer)
        try dealer.setMaxMessageSize(Int64(RelayFrame.maximumFrameSize))
        // Unlimited queues: every byte in them is within some connection's window, which bounds them.
        try dealer.setHighWaterMarks(send: 0, receive: 0)
        try dealer.setHeartbeat(intervalMs: 2000, timeoutMs: 10000)
        try dealer.connect(options.endpoint)
    }

    var sockets: [ZMQSocket] { [dealer] }

    var descriptors: [PolledDescriptor] {
        var list: [PolledDescriptor] = []
        for stream in streams.values { list += stream.descriptors }
        return list
    }

    var nextTick: ContinuousClock.Instant? {
        var next = nextHello
        for entry in opening.values { next = min(next, entry.deadline) }
        if let silent = brokerSilentSince { next = min(next, silent + Self.resumeTimeout) }
        for stream in streams.values {
            if let at = stream.resumeBy { next = min(next, at) }
            if let at = stream.upgrade.next { next = min(next, at) }
            if let at = stream.upgrade.deadline { next = min(next, at) }
        }
        return next
    }

    func tick(now: ContinuousClock.Instant) {
        if now >= nextHello {
            var hello = Boxermesh_V1_RelayHello()
            hello.session = session.welcome.session
            send(RelayFrame.with(0, .hello(hello)))
            nextHello = now + Self.helloInterval
            for stream in streams.values {
                logger.trace("relay stream", metadata: [
                    "connection": "\(stream.id)", "credit": "\(stream.credit)", "sent": "\(stream.sentOnRelay)",
                    "received": "\(stream.receivedOnRelay)", "queued": "\(stream.queued)", "owed": "\(stream.creditOwed)",
                    "eof": "\(stream.appEOF)", "descriptors": "\(stream.descriptors)"])
            }
        }
        for (id, entry) in opening where entry.deadline <= now {
            opening[id] = nil
            entry.continuation.resume(throwing: LinkError(code: ETIMEDOUT, description: "the relay did not open the connection in time"))
        }
        upgradeTick(now: now)
        resumeTick(now: now)
    }

    func shutdown() {
        for entry in opening.values {
            entry.continuation.resume(throwing: LinkError(code: ENETDOWN, description: "the node is stopping"))
        }
        expectations.close(LinkError(code: ENETDOWN, description: "the node is stopping"))
        for stream in streams.values { abort(stream, reason: "the node is stopping", notify: true) }
        dealer.close()
    }

    // MARK: Commands

    func handle(_ command: RelayCommand) {
        switch command {
        case .open(let id, let context, let continuation):
            opening[id] = (context, .now + Self.openTimeout, continuation)
            send(RelayFrame.with(id, .open(.init())))
        case .giveUp(let id, let reason):
            send(RelayFrame.with(id, .rst(.with { $0.reason = reason })))
        case .gathered(let id, let attempt, let result):
            gathered(id, attempt: attempt, result)
        case .punched(let id, let attempt, let result):
            punched(id, attempt: attempt, result)
        case .session(let event):
            sessionChanged(event)
        }
    }

    // MARK: Relay frames

    func readable(socketAt index: Int) {
        do {
            // One message may hold several frames (the broker batches what it forwards to us).
            try dealer.receiveAll { frames in for frame in frames { received(frame) } }
        } catch {
            logger.warning("relay receive failed: \(error)")
        }
    }

    func received(_ frame: [UInt8]) {
        let header: RelayFrameHeader
        do {
            header = try RelayFrameHeader(scanning: frame)
        } catch {
            return logger.warning("dropped a malformed relay frame: \(error)")
        }
        let id = header.connectionID
        switch header.kind {
        case .hello:
            if !attached { logger.debug("attached to the relay at \(options.endpoint)") }
            attached = true
            sendResumes()
        case .open:
            let window = (try? RelayFrame(frame: frame))?.open.window ?? 0
            opened(id, window: Int(window))
        case .data:
            guard let stream = streams[id] else {
                return send(RelayFrame.with(id, .rst(.with { $0.reason = "no such relayed connection" })))
            }
            guard !stream.finReceived, stream.switchAt == nil, stream.queued + header.payload.count <= stream.window else {
                return abort(stream, reason: "the peer broke the relay protocol (data past its window or end)", notify: true)
            }
            stream.inbound.append((frame, header.payload))
            stream.queued += header.payload.count
            stream.receivedOnRelay += UInt64(header.payload.count)
            writeApp(stream)
        case .credit(let credit):
            guard let stream = streams[id] else { return }
            do {
                try stream.outbound.acknowledge(Int(credit))
            } catch {
                abort(stream, reason: "the peer broke the relay protocol: \(error)", notify: true)
            }
        case .fin:
            guard let stream = streams[id] else { return }
            stream.finReceived = true
            writeApp(stream)
        case .switchOffset(let offset):
            guard let stream = streams[id] else { return }
            guard stream.direct != nil, offset == stream.receivedOnRelay else {
                return abort(stream, reason: "the peer switched to a direct link this node does not hold", notify: true)
            }
            stream.switchAt = offset
            writeApp(stream)
        case .rst:
            let reset = (try? RelayFrame(frame: frame))?.rst ?? .init()
            if reset.unknown, relayLostState(id) { return }
            let reason = reset.reason
            let error = LinkError(code: ECONNREFUSED, description: "the relay reset the connection: \(reason)")
            if let entry = opening.removeValue(forKey: id) { entry.continuation.resume(throwing: error) }
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
        let waiter: (context: RelayStreamContext, deliver: (Result<Int32, LinkError>) -> Void)
        if let entry = opening.removeValue(forKey: id) {
            waiter = (entry.context, { result in entry.continuation.resume(with: result.mapError { $0 as Error }) })
        } else if let entry = expectations.take(id) {
            waiter = (entry.context, entry.deliver)
        } else {
            return send(RelayFrame.with(id, .rst(.with { $0.reason = "the accepting node no longer waits for this connection" })))
        }
        guard window > 0 else {
            send(RelayFrame.with(id, .rst(.with { $0.reason = "no window" })))
            return waiter.deliver(.failure(LinkError(code: EPROTO, description: "the relay opened the connection without a window")))
        }
        let pair: (app: Int32, node: Int32)
        do {
            pair = try RelaySockets.loopbackPair()
        } catch {
            send(RelayFrame.with(id, .rst(.with { $0.reason = "the node cannot make a socket: \(error)" })))
            return waiter.deliver(.failure(LinkError(code: error.code, description: error.description)))
        }
        let stream = RelayStream(id: id, fd: pair.node, window: window, context: waiter.context)
        streams[id] = stream
        owners[pair.node] = id
        if options.upgrade && stream.context.initiator { scheduleUpgrade(stream, after: .seconds(1)) }
        waiter.deliver(.success(pair.app))
    }

    // MARK: Sockets

    func ready(descriptor fd: Int32, events: Int16) {
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
        guard !stream.appEOF, stream.outboundDirect || !stream.suspended else { return }
        if stream.outboundDirect {
            guard stream.directOut.isEmpty, let direct = stream.direct else { return }
            let outcome = scratch.withUnsafeMutableBytes { IO.read(stream.fd, into: $0) }
            switch outcome {
            case .moved(let count):
                let written = scratch.withUnsafeBytes { IO.write(direct, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                switch written {
                case .moved(let sent) where sent == count: break
                case .moved(let sent): stream.directOut = .init(bytes: Array(scratch[sent..<count]))
                case .wouldBlock: stream.directOut = .init(bytes: Array(scratch[0..<count]))
                case .eof, .failed: return abort(stream, reason: "the direct link failed", notify: true)
                }
            case .eof:
                stream.appEOF = true
                Glibc.shutdown(direct, Int32(SHUT_WR))
            case .wouldBlock: break
            case .failed: return abort(stream, reason: "the app reset the connection", notify: true)
            }
            return finishIfDone(stream)
        }
        // Up to `framesPerTurn` frames while the app's socket has full frames for us, sent as one multipart
        // message: fewer polls and wakeups per byte, and still a bounded turn, so connections take turns fairly.
        var batch: [[UInt8]] = []
        defer { if !batch.isEmpty { send(batch) } }
        for _ in 0..<Self.framesPerTurn {
            let capacity = min(stream.credit, RelayFrame.maximumData)
            guard capacity > 0 else { break }
            var outcome = IO.Outcome.wouldBlock
            let frame = RelayFrame.dataFrame(connectionID: stream.id, capacity: capacity) { buffer in
                outcome = IO.read(stream.fd, into: buffer)
                if case .moved(let count) = outcome { return count }
                return 0
            }
            switch outcome {
            case .moved(let count):
                guard let frame else { return }
                stream.outbound.sent(frame, payload: (frame.count - count)..<frame.count)
                batch.append(frame)
                if count < capacity { break }
                continue
            case .eof:
                stream.appEOF = true
                batch.append(RelayFrame.with(stream.id, .fin(true)).frame())
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
        drain: while stream.inboundHead < stream.inbound.count {
            let (frame, range) = stream.inbound[stream.inboundHead]
            let outcome = frame.withUnsafeBytes { IO.write(stream.fd, UnsafeRawBufferPointer(rebasing: $0[range])) }
            switch outcome {
            case .moved(let count):
                stream.queued -= count
                stream.creditOwed += count
                guard count == range.count else {
                    stream.inbound[stream.inboundHead].range = range.lowerBound + count..<range.upperBound
                    break drain
                }
                stream.inboundHead += 1
            case .wouldBlock, .eof: break drain
            case .failed: return abort(stream, reason: "the app closed the connection", notify: true)
            }
        }
        if stream.inboundHead == stream.inbound.count, !stream.inbound.isEmpty {
            stream.inbound.removeAll(keepingCapacity: true)
            stream.inboundHead = 0
        } else if stream.inboundHead > 64 {
            stream.inbound.removeFirst(stream.inboundHead)
            stream.inboundHead = 0
        }
        // Credit goes back in batches; the sender still holds ≥ 3/4 of its window meanwhile.
        // None while the relay is away: the resume tells the peer what its app took.
        if stream.creditOwed >= stream.window / 4, stream.switchAt == nil, !stream.finReceived, !stream.suspended {
            send(RelayFrame.with(stream.id, .credit(UInt32(stream.creditOwed))))
            stream.creditSent += UInt64(stream.creditOwed)
            stream.creditOwed = 0
        }
        if stream.queued == 0 {
            if stream.switchAt != nil && !stream.inboundDirect { stream.inboundDirect = true }
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
            let peerDone = stream.finReceived || (stream.inboundDirect && stream.directEOF && stream.directIn.isEmpty)
            if peerDone && !stream.appWriteShut {
                stream.appWriteShut = true
                Glibc.shutdown(stream.fd, Int32(SHUT_WR))
            }
        }
        finishIfDone(stream)
    }

    /// Direct link → app, after the switch.
    func readDirect(_ stream: RelayStream) {
        guard let direct = stream.direct, stream.inboundDirect, stream.directIn.isEmpty, !stream.directEOF else { return }
        let outcome = scratch.withUnsafeMutableBytes { IO.read(direct, into: $0) }
        switch outcome {
        case .moved(let count):
            let written = scratch.withUnsafeBytes { IO.write(stream.fd, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            switch written {
            case .moved(let sent) where sent == count: break
            case .moved(let sent): stream.directIn = .init(bytes: Array(scratch[sent..<count]))
            case .wouldBlock: stream.directIn = .init(bytes: Array(scratch[0..<count]))
            case .eof, .failed: return abort(stream, reason: "the app closed the connection", notify: true)
            }
        case .eof:
            stream.directEOF = true
            writeApp(stream)
            return
        case .wouldBlock: break
        case .failed: return abort(stream, reason: "the peer reset the connection", notify: false)
        }
        finishIfDone(stream)
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

    private func forget(_ stream: RelayStream) {
        streams[stream.id] = nil
        owners[stream.fd] = nil
        if let direct = stream.direct { owners[direct] = nil }
    }

    func send(_ frame: RelayFrame) { send(frame.frame()) }

    func send(_ bytes: [UInt8]) { send([bytes]) }

    /// Several frames as one multipart message.
    func send(_ frames: [[UInt8]]) {
        do {
            try dealer.send(frames)
        } catch {
            logger.warning("relay send failed: \(error)")
        }
    }
}
