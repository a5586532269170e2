import CNodeSupport
import CSeccomp
import FoundationEssentials
import Glibc

/// One system call of the app that the filter handed to the node, and the ways to answer it. Exactly one answer
/// per call (the app's thread waits for it); answers may come from any thread.
struct TrappedCall: Sendable {
    let listener: Int32
    let id: UInt64
    /// The calling thread.
    let pid: pid_t
    let call: boxer_sc_call
    let args: [UInt64]

    init(listener: Int32, _ notification: boxer_sc_notification) {
        self.listener = listener
        id = notification.id
        pid = notification.pid
        call = notification.call
        args = withUnsafeBytes(of: notification.args) { Array($0.bindMemory(to: UInt64.self)) }
    }

    /// The argument `index` as a descriptor number.
    func fd(_ index: Int) -> Int32 { Int32(truncatingIfNeeded: args[index]) }

    // MARK: Answers

    /// Runs the call as if there were no filter. Only for calls the node does not act on: the kernel reads the
    /// arguments again, so nothing the node checked is relied on afterwards.
    func proceed() { _ = boxer_sc_continue(listener, id) }

    /// The call returns `value`.
    func succeed(_ value: Int64 = 0) { _ = answer(value) }

    /// The call fails with `code`.
    func fail(_ code: Int32) { _ = answer(-1, error: code == 0 ? EIO : code) }

    /// The call returns `value`, or fails with `error` when that is not 0. False if the app no longer waits for the
    /// answer (a signal interrupted the call).
    func answer(_ value: Int64, error: Int32 = 0) -> Bool { boxer_sc_reply(listener, id, value, error) == 0 }

    /// Puts a copy of `fd` into the app — at `target` (replacing its socket there) or at a new number that the
    /// call then returns (`returning`). Returns the app's number, or nil (errno set: the call was interrupted).
    func inject(_ fd: Int32, at target: Int32? = nil, closeOnExec: Bool, returning: Bool) -> Int32? {
        let number = boxer_sc_inject(listener, id, fd, target ?? -1, closeOnExec ? 1 : 0, returning ? 1 : 0)
        return number >= 0 ? number : nil
    }

    /// Whether the app's thread still waits for this answer (a signal interrupts it).
    var isPending: Bool { boxer_sc_valid(listener, id) != 0 }

    // MARK: The app's memory and descriptors

    /// A copy of the app's descriptor (pidfd_getfd), close-on-exec; the caller closes it. Nil: not a descriptor.
    func takeDescriptor(_ index: Int) -> Int32? {
        let copy = boxer_take_app_fd(pid, fd(index))
        return copy >= 0 ? copy : nil
    }

    /// The sockaddr at argument `pointer`, `length` bytes (capped at sockaddr_in6's size).
    func socketAddress(pointer: Int, length: Int) -> AppSocketAddress? {
        let count = min(Int(truncatingIfNeeded: args[length]), AppSocketAddress.inet6Length)
        guard args[pointer] != 0, count >= 2 else { return nil }
        var bytes = [UInt8](repeating: 0, count: count)
        guard boxer_sc_read(pid, args[pointer], &bytes, count) == 0 else { return nil }
        return AppSocketAddress(bytes: bytes)
    }

    /// Fills a (buffer, socklen_t *) pair of arguments as the kernel does for a sockaddr or an option's value: at
    /// most the app's length, truncated, and the full length stored back. False when the app's memory is not
    /// writable there (EFAULT).
    func store(_ bytes: [UInt8], pointer: Int, lengthPointer: Int) -> Bool {
        guard args[pointer] != 0, args[lengthPointer] != 0 else { return true }  // accept(fd, NULL, NULL)
        var room: socklen_t = 0
        guard boxer_sc_read(pid, args[lengthPointer], &room, MemoryLayout<socklen_t>.size) == 0 else { return false }
        var full = socklen_t(bytes.count)
        let count = min(Int(room), bytes.count)
        if count > 0, boxer_sc_write(pid, args[pointer], bytes, count) != 0 { return false }
        return boxer_sc_write(pid, args[lengthPointer], &full, MemoryLayout<socklen_t>.size) == 0
    }

    /// The NUL-terminated path at argument `index`; nil if unreadable or longer than PATH_MAX.
    func path(_ index: Int) -> String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX))
        let length = buffer.withUnsafeMutableBytes { boxer_sc_read_string(pid, args[index], $0.baseAddress, $0.count) }
        guard length >= 0 else { return nil }
        return String(decoding: buffer[..<length], as: UTF8.self)
    }

    /// Whether the app's descriptor `index` is close-on-exec (FD_CLOEXEC belongs to the descriptor, not the file:
    /// a copy cannot tell, the app's /proc fdinfo can).
    func isCloseOnExec(_ index: Int) -> Bool { boxer_sc_fd_cloexec(pid, fd(index)) == 1 }
}
