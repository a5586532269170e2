import CSeccomp
import FoundationEssentials
import Glibc

/// Names: open("/etc/hosts") gets the node's ``HostsFile``, and stat("/etc/hosts") describes it (Go re-reads the
/// file only when its mtime or size changed). Every other path runs untouched.
extension SeccompSupervisor {
    static let hostsPath = "/etc/hosts"

    /// open(path, flags, mode) and openat(dirfd, path, flags, mode).
    func openFile(_ trapped: TrappedCall) {
        let (pathIndex, flagsIndex) = trapped.call == BOXER_SC_OPEN ? (0, 1) : (1, 2)
        let flags = Int32(truncatingIfNeeded: trapped.args[flagsIndex])
        guard flags & O_ACCMODE == O_RDONLY, trapped.path(pathIndex) == Self.hostsPath, let hosts else { return trapped.proceed() }
        let fd = Glibc.open(hosts.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return trapped.proceed() }
        defer { close(fd) }
        _ = trapped.inject(fd, closeOnExec: flags & O_CLOEXEC != 0, returning: true)
    }

    /// newfstatat(dirfd, path, statbuf, flags).
    func statFile(_ trapped: TrappedCall) {
        guard trapped.path(1) == Self.hostsPath, trapped.args[2] != 0, let hosts else { return trapped.proceed() }
        var status = Glibc.stat()
        guard fstatat(AT_FDCWD, hosts.path, &status, 0) == 0 else { return trapped.proceed() }
        boxer_sc_write(trapped.pid, trapped.args[2], &status, MemoryLayout<Glibc.stat>.size) == 0
            ? trapped.succeed() : trapped.fail(EFAULT)
    }
}
