#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension ChildProcess {
    /// Starts the child with `posix_spawnp` and returns its pid.
    ///
    /// Files for redirections are opened here, in this process (close-on-exec), so a missing folder is reported as
    /// such rather than as a missing program; the child gets them through `dup2` file actions, after which every
    /// descriptor from 3 up is closed in it.
    static func spawn(
        _ arguments: [String],
        environment: [String: String]?,
        streams: [Redirection],
        resettingSignals: [Int32]
    ) throws(SpawnError) -> pid_t {
        guard let program = arguments.first, !program.isEmpty else {
            throw SpawnError(program: "", code: EINVAL)
        }
        var opened: [Int32] = []  // descriptors this function opened; closed when it returns
        defer { opened.forEach { _ = close($0) } }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, stream) in zip(Int32(0)..., streams) {
            let source: Int32
            switch stream {
            case .inherit:
                continue
            case .null:
                source = try openFile("/dev/null", for: target, program: program)
                opened.append(source)
            case .file(let path):
                source = try openFile(path, for: target, program: program)
                opened.append(source)
            case .descriptor(let fd) where fd == target:
                source = fd  // dup2 onto itself clears close-on-exec (glibc ≥ 2.29)
            case .descriptor(let fd):
                // Always through a copy above 2: a source among 0...2 could be overwritten by another stream's dup2.
                let copy = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1
                guard copy >= 0 else {
                    let code = fd >= 0 ? errno : EBADF
                    let step = "using descriptor \(fd) for \(name(of: target))"
                    throw SpawnError(program: program, code: code, step: step)
                }
                source = copy
                opened.append(copy)
            }
            posix_spawn_file_actions_adddup2(&actions, source, target)
        }
        if let closeFrom = addCloseFrom { _ = closeFrom(&actions, 3) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child would inherit the spawning thread's mask: Dispatch's worker threads (Swift's cooperative pool)
        // block nearly every signal, and a child started there could not be ended with SIGTERM or SIGINT.
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        var flags = POSIX_SPAWN_SETSIGMASK
        if !resettingSignals.isEmpty {
            var defaults = sigset_t()
            sigemptyset(&defaults)
            for signal in resettingSignals { sigaddset(&defaults, signal) }
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            flags |= POSIX_SPAWN_SETSIGDEF
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result: Int32
        if let environment {
            let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
            defer { envp.forEach { free($0) } }
            result = posix_spawnp(&pid, program, &actions, &attributes, argv, envp)
        } else {
            result = posix_spawnp(&pid, program, &actions, &attributes, argv, environ)
        }
        guard result == 0 else { throw SpawnError(program: program, code: result) }
        return pid
    }

    /// Opens `path` for stream `target` (0 reads; 1 and 2 write, create, truncate), close-on-exec, above 2.
    private static func openFile(_ path: String, for target: Int32, program: String) throws(SpawnError) -> Int32 {
        let flags = target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC
        var fd: Int32
        repeat {
            fd = open(path, flags | O_CLOEXEC, 0o644)
        } while fd < 0 && errno == EINTR
        guard fd >= 0 else {
            throw SpawnError(program: program, code: errno, step: "opening \(path) for \(name(of: target))")
        }
        if fd < 3 {  // this process has 0, 1 or 2 closed; keep the copy out of the way of the other streams
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
            let failure = errno
            _ = close(fd)
            guard copy >= 0 else {
                throw SpawnError(program: program, code: failure, step: "opening \(path) for \(name(of: target))")
            }
            fd = copy
        }
        return fd
    }

    private static func name(of stream: Int32) -> String {
        ["standard input", "standard output", "standard error"][Int(stream)]
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), looked up at run time: Swift's Glibc module
    /// imports `spawn.h` without `_GNU_SOURCE`, which hides it. Nil with an older C library; then descriptors
    /// opened without close-on-exec leak into children.
    private static let addCloseFrom: AddCloseFrom? = {
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
}
