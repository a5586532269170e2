import CNodeSupport
import Glibc

/// The two joined TCP connections of one spliced relayed connection, and a pipe per direction between them:
/// splice(2) moves bytes from one socket into the pipe and from the pipe into the other socket without copying
/// them into this process. An end's EOF becomes a FIN to the other once its pipe is empty; a reset or error on
/// either resets both, so each app sees what happened.
final class SplicedPair {
    /// One direction: the socket it reads, the one it writes, the pipe between.
    struct Direction {
        let source: Int32
        let destination: Int32
        let pipe: (read: Int32, write: Int32)
        let capacity: Int
        /// Bytes in the pipe.
        var held = 0
        /// The pipe took no more although it holds less than its capacity (its slots are full of part pages).
        var pipeFull = false
        var sourceEnded = false
        var shut = false
        /// Bytes moved to the destination so far.
        var moved: UInt64 = 0

        /// Whether to poll the source for input.
        var wantsInput: Bool { !sourceEnded && !pipeFull && held < capacity }
    }

    enum Ending: CustomStringConvertible {
        /// Both directions ended with a FIN.
        case closed
        /// An end reset, or a splice failed: both ends were reset.
        case reset(String)

        var description: String {
            switch self {
            case .closed: "closed"
            case .reset(let why): "reset (\(why))"
            }
        }
    }

    let connectionID: UInt64
    /// The initiator's socket, then the acceptor's.
    let fds: (Int32, Int32)
    private(set) var forward: Direction
    private(set) var backward: Direction

    init(connectionID: UInt64, fds: (Int32, Int32), pipeBytes: Int32) throws(SpliceError) {
        self.connectionID = connectionID
        self.fds = fds
        let first = try Self.pipe(pipeBytes)
        let second: (read: Int32, write: Int32, capacity: Int)
        do {
            second = try Self.pipe(pipeBytes)
        } catch {
            close(first.read)
            close(first.write)
            throw error
        }
        forward = Direction(source: fds.0, destination: fds.1, pipe: (first.read, first.write), capacity: first.capacity)
        backward = Direction(source: fds.1, destination: fds.0, pipe: (second.read, second.write), capacity: second.capacity)
    }

    private static func pipe(_ bytes: Int32) throws(SpliceError) -> (read: Int32, write: Int32, capacity: Int) {
        var ends: [Int32] = [-1, -1]
        let capacity = boxer_pipe_cloexec(&ends, bytes)
        guard capacity > 0 else { throw SpliceError("no pipe: \(String(cString: strerror(errno)))") }
        return (ends[0], ends[1], Int(capacity))
    }

    /// What to poll `fd` for: input while its direction's pipe has room, output while the other's holds bytes.
    func events(for fd: Int32) -> Int16 {
        let (out, into) = fd == fds.0 ? (forward, backward) : (backward, forward)
        var events: Int16 = 0
        if out.wantsInput { events |= Int16(POLLIN) }
        if into.held > 0 { events |= Int16(POLLOUT) }
        return events
    }

    /// Moves what can be moved now, both ways; how the pair ended once it has (its descriptors are closed then).
    func pump() -> Ending? {
        if let failure = Self.move(&forward) ?? Self.move(&backward) {
            reset()
            return .reset(failure)
        }
        guard forward.shut && backward.shut else { return nil }
        closeAll()
        return .closed
    }

    /// Until neither side of the direction moves a byte; a failure's description.
    private static func move(_ direction: inout Direction) -> String? {
        while true {
            var progressed = false
            if direction.wantsInput {
                let count = boxer_splice(direction.source, direction.pipe.write, direction.capacity - direction.held)
                if count > 0 {
                    direction.held += count
                    progressed = true
                } else if count == 0 {
                    direction.sourceEnded = true
                } else if errno == EAGAIN {
                    // With bytes already in the pipe, EAGAIN may be the pipe's (no free slot), not the socket's.
                    direction.pipeFull = direction.held > 0
                } else if errno != EINTR {
                    return "reading: \(String(cString: strerror(errno)))"
                }
            }
            if direction.held > 0 {
                let count = boxer_splice(direction.pipe.read, direction.destination, direction.held)
                if count > 0 {
                    direction.held -= count
                    direction.moved += UInt64(count)
                    direction.pipeFull = false
                    progressed = true
                } else if count < 0, errno != EAGAIN, errno != EINTR {
                    return "writing: \(String(cString: strerror(errno)))"
                }
            }
            if direction.sourceEnded, direction.held == 0, !direction.shut {
                direction.shut = true
                Glibc.shutdown(direction.destination, Int32(SHUT_WR))
            }
            if !progressed { return nil }
        }
    }

    /// Resets both connections (their nodes' sockets see ECONNRESET) and closes the pipes.
    func reset() {
        Self.reset(fds.0)
        Self.reset(fds.1)
        closePipes()
    }

    /// Both FINs passed on: a plain close, so the kernel still delivers what the sockets hold (a reset would drop it).
    private func closeAll() {
        for fd in [fds.0, fds.1] {
            Self.closesWithReset(fd, false)
            close(fd)
        }
        closePipes()
    }

    private func closePipes() {
        for fd in [forward.pipe.read, forward.pipe.write, backward.pipe.read, backward.pipe.write] { close(fd) }
    }

    /// Closes `fd` with a reset rather than a FIN.
    static func reset(_ fd: Int32) {
        closesWithReset(fd)
        close(fd)
    }

    /// SO_LINGER 0 (`reset`) makes closing `fd`, also by the process ending, send a reset rather than a FIN;
    /// without it, a close lets the kernel deliver what the socket still holds.
    static func closesWithReset(_ fd: Int32, _ reset: Bool = true) {
        var linger = Glibc.linger(l_onoff: reset ? 1 : 0, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }
}

/// The splice port could not join a connection.
struct SpliceError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
