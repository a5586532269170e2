import Glibc

// Files with plain system calls, not FoundationEssentials' files: the node writes and reads a few small files as it
// starts, and Foundation's file code would stay mapped in the function for the node's whole life.

/// A file opened for reading, closed when released.
final class ReadOnlyFile {
    let fd: Int32

    init?(_ path: String) {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
    }

    deinit { close(fd) }

    var size: Int { Int(lseek(fd, 0, SEEK_END)) }

    /// The whole file, or nil when it cannot be read.
    var contents: [UInt8]? { bytes(size, at: 0) }

    /// What the file holds up to `limit` bytes, read until its end: for the kernel's files (/proc, /sys), whose
    /// size says nothing.
    func read(upTo limit: Int) -> [UInt8]? { read(limit, at: 0, exactly: false) }

    /// `count` bytes at `offset`, or nil when the file has fewer.
    func bytes(_ count: Int, at offset: Int) -> [UInt8]? { read(count, at: offset, exactly: true) }

    /// Up to `count` bytes at `offset`, stopping at the file's end; nil on an error, or `exactly` and fewer.
    private func read(_ count: Int, at offset: Int, exactly: Bool) -> [UInt8]? {
        guard count >= 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if got < 0, errno == EINTR { continue }
            guard got > 0 else {
                if got == 0 && !exactly { break }
                return nil
            }
            done += got
        }
        return Array(buffer[..<done])
    }
}

/// Creates `path` (which must not exist) holding `bytes`, with exactly `mode` whatever the umask; false if any step
/// failed, and then no file is left.
func createFile(_ path: String, holding bytes: [UInt8], mode: mode_t) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return false }
    let complete = writeAll(bytes, to: fd) && fchmod(fd, mode) == 0
    close(fd)
    if !complete { unlink(path) }
    return complete
}

/// Writes all of `bytes` to `fd`; false if a write failed.
func writeAll(_ bytes: [UInt8], to fd: Int32) -> Bool {
    var done = 0
    while done < bytes.count {
        let wrote = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        if wrote < 0, errno == EINTR { continue }
        guard wrote > 0 else { return false }
        done += wrote
    }
    return true
}

/// Where the node writes its files: `$TMPDIR`, else /tmp (on Lambda, the only writable place).
var temporaryDirectory: String {
    guard let value = getenv("TMPDIR"), value.pointee != 0 else { return "/tmp" }
    return String(cString: value)
}
