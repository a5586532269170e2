#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A file in the temporary folder that has no name: created, then unlinked at once. A child can write any amount to
/// it without blocking (unlike a pipe nobody drains), a grandchild that keeps it open cannot make a reader wait, and
/// it disappears with its last descriptor, even if this process crashes.
final class TemporaryFile {
    /// The open descriptor (read-write, close-on-exec), closed when this object goes away.
    let fd: Int32

    /// Creates the file in `$TMPDIR` (or `/tmp`). Throws the errno on failure.
    init() throws(SpawnError) {
        let folder = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(folder)/child-process-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw SpawnError(program: "", code: errno, step: "creating a temporary file in \(folder)")
        }
        unlink(template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        self.fd = fd
    }

    deinit {
        close(fd)
    }

    /// Writes all of `bytes` at the start of the file.
    func write(_ bytes: [UInt8]) throws(SpawnError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes {
                pwrite(fd, $0.baseAddress! + offset, $0.count - offset, off_t(offset))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw SpawnError(program: "", code: errno, step: "writing standard input to a temporary file")
            }
            offset += written
        }
    }

    /// Everything in the file, from the start (whatever the descriptor's position).
    func readAll() -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, $0.count, off_t(bytes.count)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return bytes }
            bytes.append(contentsOf: chunk[..<count])
        }
    }
}
