import CSeccomp
import FoundationEssentials
import Glibc

/// How the node reaches its app's sockets.
public enum InterposeMode: String, Sendable, CaseIterable {
    /// The preload shim for a dynamically linked program, the seccomp supervisor for a static or Go one.
    case auto
    /// Always the preload shim (LD_PRELOAD).
    case preload
    /// Always the seccomp supervisor (it fails if the kernel or a platform filter does not allow it).
    case seccomp
}

/// The way chosen for one app, and why (the node logs both).
struct Interposition: Equatable, Sendable {
    var supervised: Bool
    var reason: String

    /// Chooses for `command` under `mode`; `PATH` is the app's.
    static func choose(_ mode: InterposeMode, command: String, path: String?) -> Interposition {
        switch mode {
        case .preload: return Interposition(supervised: false, reason: "--interpose preload")
        case .seccomp: return Interposition(supervised: true, reason: "--interpose seccomp")
        case .auto: break
        }
        guard let file = ExecutableKind.locate(command, path: path) else {
            return Interposition(supervised: false, reason: "'\(command)' is not in PATH (the launch will say so)")
        }
        do {
            switch try ExecutableKind.inspect(path: file) {
            case .go: return Interposition(supervised: true, reason: "\(file) is a Go program (it makes its socket calls itself)")
            case .staticBinary: return Interposition(supervised: true, reason: "\(file) is statically linked (no ELF interpreter)")
            case .dynamic: return Interposition(supervised: false, reason: "\(file) is dynamically linked")
            case .script: return Interposition(supervised: false, reason: "\(file) is a script (its interpreter gets the shim)")
            }
        } catch {
            return Interposition(supervised: false, reason: "\(error.description); trying the preload shim")
        }
    }

    /// Nil when this kernel can supervise an app; else what it lacks.
    static func kernelLacks() -> String? {
        var missing: UnsafePointer<CChar>? = nil
        let code = boxer_sc_probe(&missing)
        guard code != 0 else { return nil }
        return "\(missing.map { String(cString: $0) } ?? "seccomp") is not available: \(String(cString: strerror(code)))"
    }
}
