#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension ChildProcess {
    /// How a program started by ``run(_:environment:timeout:input:)`` ended and what it printed.
    public struct Output: Sendable, Equatable {
        /// The exit status; 128 + N when signal N ended the program (SIGKILL, 137, after a time-out).
        public var status: Int32
        /// Everything the program wrote to standard output (as UTF-8; invalid bytes become U+FFFD).
        public var standardOutput: String
        /// Everything the program wrote to standard error (as UTF-8; invalid bytes become U+FFFD).
        public var standardError: String
        /// True when the program was still running at the time limit and was killed.
        public var timedOut: Bool

        public init(status: Int32, standardOutput: String, standardError: String, timedOut: Bool) {
            self.status = status
            self.standardOutput = standardOutput
            self.standardError = standardError
            self.timedOut = timedOut
        }
    }

    /// Runs `arguments`, waits for it, and returns its status and output. Blocks the calling thread.
    ///
    /// Standard output and error go to unnamed temporary files, not pipes: output of any size cannot deadlock, and
    /// a background grandchild that inherited them cannot keep this call waiting. Standard input is `input`, or
    /// `/dev/null` without it.
    ///
    /// - Parameters:
    ///   - arguments: the program (looked up in `PATH` when it has no `/`), then its arguments.
    ///   - environment: the program's whole environment; nil passes this process's environment.
    ///   - timeout: when given, a program still running after it is killed with SIGKILL and the output says
    ///     ``Output/timedOut``.
    ///   - input: what the program reads on standard input.
    /// - Throws: ``SpawnError`` only when the program cannot be started; a failing program is a normal result.
    public static func run(
        _ arguments: [String],
        environment: [String: String]? = nil,
        timeout: Duration? = nil,
        input: String? = nil
    ) throws(SpawnError) -> Output {
        let program = arguments.first ?? ""
        let output: TemporaryFile
        let error: TemporaryFile
        var inputFile: TemporaryFile?
        do throws(SpawnError) {
            output = try TemporaryFile()
            error = try TemporaryFile()
            if let input {
                let file = try TemporaryFile()
                try file.write(Array(input.utf8))
                inputFile = file
            }
        } catch {
            throw SpawnError(program: program, code: error.code, step: error.step)
        }
        let child = try ChildProcess(
            arguments,
            environment: environment,
            standardInput: inputFile.map { .descriptor($0.fd) } ?? .null,
            standardOutput: .descriptor(output.fd),
            standardError: .descriptor(error.fd)
        )
        var timedOut = false
        let status: Int32
        if let timeout {
            if let finished = child.wait(timeout: timeout) {
                status = finished
            } else {
                timedOut = child.send(SIGKILL)
                status = child.wait()
            }
        } else {
            status = child.wait()
        }
        return Output(
            status: status,
            standardOutput: String(decoding: output.readAll(), as: UTF8.self),
            standardError: String(decoding: error.readAll(), as: UTF8.self),
            timedOut: timedOut
        )
    }
}
