import Glibc

/// A self-pipe that wakes a thread blocked in poll() from any other thread: writing a byte makes ``readEnd``
/// readable. Both ends are non-blocking and close-on-exec.
public final class WakePipe: Sendable {
    /// Poll this for input.
    public let readEnd: Int32
    private let writeEnd: Int32

    /// The pipe could not be created (the process is out of descriptors); `code` is the errno.
    public struct Failure: Error, CustomStringConvertible {
        public let code: Int32
        public var description: String { "cannot create a wake-up pipe: \(String(cString: strerror(code)))" }
    }

    public init() throws(Failure) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw Failure(code: errno) }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        (readEnd, writeEnd) = (fds[0], fds[1])
    }

    deinit {
        Glibc.close(readEnd)
        Glibc.close(writeEnd)
    }

    /// Makes ``readEnd`` readable; safe from any thread, any number of times.
    public func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(writeEnd, &byte, 1)  // a full pipe already means "wake up"
    }

    /// Empties the pipe (by the polling thread, once it saw ``readEnd`` readable).
    public func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while Glibc.read(readEnd, &buffer, buffer.count) > 0 {}
    }
}
