import Glibc

/// Starts `body` on a new detached thread named `name` (the kernel keeps 15 bytes; `top -H`, `ps -L` and gdb show
/// it). Every long-lived thread of the broker and the node starts here, on plain pthreads: Foundation's `Thread`
/// would link all of Foundation into a binary that must fit a 128 MB function.
package func startThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    final class Start: @unchecked Sendable {  // handed to exactly one thread, which consumes it
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { (self.name, self.body) = (name, body) }
    }
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
    var thread = pthread_t()
    let status = pthread_create(&thread, &attributes, { argument in
        let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
        nameThisThread(start.name)
        start.body()
        return nil
    }, start)
    // Out of threads is out of memory for this process: nothing sensible can go on.
    precondition(status == 0, "cannot start thread \(name): pthread_create returned \(status)")
}

/// pthread_setname_np needs _GNU_SOURCE, which Swift's Glibc module does not define: write what it writes.
private func nameThisThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }  // no /proc: the thread goes unnamed, nothing else changes
    let bytes = Array(name.utf8.prefix(15))
    _ = write(fd, bytes, bytes.count)
    close(fd)
}
