import CNodeSupport
import CSeccomp
import Glibc
import Testing

/// Copying an app's descriptor into the node (`boxer_take_app_fd`, the one pidfd_getfd helper that the seccomp
/// supervisor and the reset of an expired peer's sockets share).
@Suite("The app's descriptors, copied into the node")
struct AppDescriptorTests {
    @Test("a descriptor is copied from a process named by the id of one of its threads (as a trapped call names it), close-on-exec")
    func copyByThreadID() throws {
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        defer { ends.forEach { close($0) } }
        try Self.withOtherThread { thread in
            #expect(thread != getpid())
            let copy = boxer_take_app_fd(thread, ends[0])
            try #require(copy >= 0, "\(String(cString: strerror(errno)))")
            defer { close(copy) }
            var original = stat(), copied = stat()
            #expect(fstat(ends[0], &original) == 0 && fstat(copy, &copied) == 0)
            #expect(original.st_ino == copied.st_ino)
            #expect(fcntl(copy, F_GETFD) & FD_CLOEXEC != 0)
        }
    }

    @Test("no such descriptor: EBADF, which is how the supervisor's probe knows pidfd_getfd is there")
    func missingDescriptor() {
        #expect(boxer_take_app_fd(getpid(), -1) == -1 && errno == EBADF)
        var missing: UnsafePointer<CChar>?
        #expect(boxer_sc_probe(&missing) == 0, "\(missing.map { String(cString: $0) } ?? "")")
    }

    /// Runs `body` with the thread id of a second thread of this process, which lives until `body` returns.
    private static func withOtherThread(_ body: (pid_t) throws -> Void) throws {
        var report: [Int32] = [-1, -1], gate: [Int32] = [-1, -1]
        try #require(pipe(&report) == 0 && pipe(&gate) == 0)
        defer { (report + [gate[0]]).forEach { close($0) } }
        let ends = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
        defer { ends.deallocate() }
        ends[0] = report[1]
        ends[1] = gate[0]
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { argument in
            let ends = argument!.assumingMemoryBound(to: Int32.self)
            // "PID/task/TID" (Glibc's module has no gettid).
            var link = [CChar](repeating: 0, count: 64)
            let length = max(readlink("/proc/thread-self", &link, link.count - 1), 0)
            let path = String(decoding: link[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var id = path.split(separator: "/").last.flatMap { pid_t($0) } ?? 0
            _ = write(ends[0], &id, MemoryLayout<pid_t>.size)
            var byte: UInt8 = 0
            _ = read(ends[1], &byte, 1)  // until the gate closes
            return nil
        }, ends)
        try #require(started == 0)
        defer {
            close(gate[1])
            pthread_join(thread, nil)
        }
        var id: pid_t = 0
        try #require(read(report[0], &id, MemoryLayout<pid_t>.size) == MemoryLayout<pid_t>.size)
        try body(id)
    }
}
