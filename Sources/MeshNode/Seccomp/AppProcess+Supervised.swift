import CSeccomp
import ChildProcess
import FoundationEssentials
import Glibc

extension AppProcess {
    /// Starts the app under the node's seccomp filter (``SeccompSupervisor``): like ``init(arguments:environment:output:)``,
    /// but the child installs the filter before exec and the node gets its listener. Throws
    /// ``SupervisedLaunchError``: `filterRefused` when the kernel or a platform's own filter does not allow it (the
    /// caller may then fall back to the preload shim), `launch` when the program cannot run.
    static func supervised(
        arguments: [String], environment: [String: String], output: AppOutput?
    ) throws(SupervisedLaunchError) -> (app: AppProcess, listener: Int32) {
        guard let program = arguments.first, !program.isEmpty else {
            throw .launch(LaunchError(program: "", code: EINVAL))
        }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let reset = SignalRelay.relayed + [SIGPIPE]
        var (pid, listener, stage): (pid_t, Int32, Int32) = (0, -1, 0)
        let code = boxer_seccomp_spawn(
            program, argv, envp, output?.standardOutput ?? -1, output?.standardError ?? -1, reset, Int32(reset.count),
            &pid, &listener, &stage)
        switch (code, stage) {
        case (0, _): break
        case (_, 1): throw .filterRefused("installing the seccomp filter failed: \(String(cString: strerror(code)))")
        default: throw .launch(LaunchError(program: program, code: code))
        }
        do throws(SpawnError) {
            return (AppProcess(child: try ChildProcess(adopting: pid, arguments: arguments)), listener)
        } catch {
            close(listener)
            throw .launch(LaunchError(program: program, code: error.code))
        }
    }
}

/// Why a supervised app did not start.
enum SupervisedLaunchError: Error {
    /// The seccomp filter was refused (no user notification in this kernel, or a platform filter forbids it).
    case filterRefused(String)
    /// The program could not run.
    case launch(LaunchError)
}
