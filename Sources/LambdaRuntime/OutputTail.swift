import FoundationEssentials
import Glibc
import MeshNode
import Synchronization
import ZeroMQ

/// Carries an app's standard output and error through to the runtime's own (the function's log), keeping the last
/// lines (``OutputLines``) for the invocation's response. One thread polls both pipes until ``finish()``.
final class OutputTail: Sendable {
    /// The pipes' write ends, for the app.
    let output: AppOutput
    private let sources: [(read: Int32, passTo: Int32)]
    private let stop: WakePipe
    private let lines = Mutex(OutputLines())
    private let done = Mutex<(finished: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    init() throws(TailError) {
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        guard pipe(&out) == 0 else { throw TailError(code: errno) }
        guard pipe(&err) == 0 else {
            let code = errno
            out.forEach { close($0) }
            throw TailError(code: code)
        }
        // Children get exactly descriptors 0-2 (ChildProcess closes the rest), so this only keeps other exec()s clean.
        for fd in out + err { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        do {
            stop = try WakePipe()
        } catch {
            (out + err).forEach { close($0) }
            throw TailError(code: error.code)
        }
        output = AppOutput(standardOutput: out[1], standardError: err[1])
        sources = [(out[0], STDOUT_FILENO), (err[0], STDERR_FILENO)]
        startThread(named: "app-output") { [self] in
            copyUntilStopped()
            done.withLock { state in
                state.finished = true
                state.waiter?.resume()
            }
        }
    }

    /// Stops passing output on, once the app has ended, and returns its last lines. What the app wrote before it
    /// ended is all read first; a child it left behind that still holds the pipes gets EPIPE from now on.
    func finish() async -> [String] {
        close(output.standardOutput)
        close(output.standardError)
        stop.wake()
        await withCheckedContinuation { continuation in
            let finished = done.withLock { state in
                if !state.finished { state.waiter = continuation }
                return state.finished
            }
            if finished { continuation.resume() }
        }
        sources.forEach { close($0.read) }
        return lines.withLock { $0.text }
    }

    private func copyUntilStopped() {
        var open = sources
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var stopping = false
        while !open.isEmpty {
            var polled = open.map { pollfd(fd: $0.read, events: Int16(POLLIN), revents: 0) }
            if !stopping { polled.append(pollfd(fd: stop.readEnd, events: Int16(POLLIN), revents: 0)) }
            // Once stopping, a source with nothing left to read is done: the app has ended.
            let ready = poll(&polled, nfds_t(polled.count), stopping ? 0 : -1)
            if ready < 0 && errno == EINTR { continue }
            if !stopping, let last = polled.last, last.revents != 0 {
                stopping = true
                continue
            }
            var still: [(read: Int32, passTo: Int32)] = []
            for (source, state) in zip(open, polled) {
                guard state.revents != 0 else {
                    if !stopping { still.append(source) }
                    continue
                }
                let count = read(source.read, &buffer, buffer.count)
                if count < 0 && errno == EINTR {
                    still.append(source)
                    continue
                }
                guard count > 0 else { continue }  // end of file: the app and everything it started closed it
                passOn(buffer[0..<count], to: source.passTo)
                lines.withLock { $0.append(buffer[0..<count]) }
                still.append(source)
            }
            open = still
        }
    }

    /// Writes `bytes` to the runtime's own stream; a log that cannot take them loses them, the app does not stall.
    private func passOn(_ bytes: ArraySlice<UInt8>, to fd: Int32) {
        var rest = bytes
        while !rest.isEmpty {
            let written = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            rest = rest.dropFirst(written)
        }
    }
}

/// The pipes for the app's output could not be made (the process is out of descriptors).
struct TailError: Error, CustomStringConvertible {
    let code: Int32
    var description: String { "cannot make pipes for the app's output: \(String(cString: strerror(code)))" }
}
