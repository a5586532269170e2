#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A child process could not be started: which program, which step failed (if not the start itself), and the errno.
///
/// `description` reads like `cannot start 'stun': no such file (looked up in PATH)`.
public struct SpawnError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The program as given (the first argument); empty when there were no arguments.
    public var program: String
    /// The `errno` value that says what went wrong (`ENOENT`, `EACCES`, …).
    public var code: Int32
    /// The preparation step that failed, such as `opening /tmp/x for standard output`; nil when starting the program
    /// itself failed.
    public var step: String?

    public init(program: String, code: Int32, step: String? = nil) {
        self.program = program
        self.code = code
        self.step = step
    }

    /// Why, in words: `no such file`, `permission denied`, or the system's text for ``code``.
    public var reason: String {
        switch code {
        case ENOENT where step == nil && !program.contains("/"): return "no such file (looked up in PATH)"
        case ENOENT: return "no such file"
        case EACCES: return "permission denied"
        case ENOEXEC: return "not an executable format"
        default:
            let text = String(cString: strerror(code))
            return text.prefix(1).lowercased() + text.dropFirst()
        }
    }

    /// The status a shell reports for this failure: 127 when the program does not exist, 126 when it exists but
    /// cannot be run, 1 when a preparation step (such as opening a redirection's file) failed.
    public var exitStatus: Int32 {
        if step != nil { return 1 }
        return code == ENOENT ? 127 : 126
    }

    public var description: String {
        if program.isEmpty && step == nil { return "cannot start a process: no program given" }
        return "cannot start '\(program)': " + (step.map { "\($0): " } ?? "") + reason
    }
}
