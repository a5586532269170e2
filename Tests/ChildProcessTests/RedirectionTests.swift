import ChildProcess
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the standard streams go, and that nothing else leaks into the child.
@Suite(.timeLimit(.minutes(2))) struct RedirectionTests {
    @Test func filesAndNull() throws {
        let input = try temporaryPath("in")
        let output = try temporaryPath("out")
        defer { unlink(input); unlink(output) }
        try write("from the file\n", to: input)
        try write(String(repeating: "old content that must be truncated\n", count: 10), to: output)
        let child = try ChildProcess(
            ["/bin/sh", "-c", "cat; echo to-stderr >&2"],
            standardInput: .file(input),
            standardOutput: .file(output),
            standardError: .null
        )
        #expect(child.wait() == 0)
        #expect(contents(of: output) == "from the file\n")
    }

    @Test func outputFileIsCreated() throws {
        let output = try temporaryPath("created")
        defer { unlink(output) }
        #expect(try ChildProcess(["/bin/sh", "-c", "echo hi >&2"], standardError: .file(output)).wait() == 0)
        #expect(contents(of: output) == "hi\n")
    }

    @Test func nullInputReadsEndOfFile() throws {
        let output = try temporaryPath("wc")
        defer { unlink(output) }
        let child = try ChildProcess(["wc", "-c"], standardInput: .null, standardOutput: .file(output))
        #expect(child.wait(timeout: .seconds(10)) == 0)
        #expect(contents(of: output)?.trimmingWhitespace == "0")
    }

    /// One descriptor for both output and error (they share the offset, so nothing is overwritten), and a pipe.
    @Test func descriptors() throws {
        let log = try temporaryPath("log")
        defer { unlink(log) }
        let fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        try #require(fd >= 0)
        let child = try ChildProcess(
            ["/bin/sh", "-c", "echo one; echo two >&2; echo three"],
            standardOutput: .descriptor(fd),
            standardError: .descriptor(fd)
        )
        close(fd)
        #expect(child.wait() == 0)
        #expect(contents(of: log) == "one\ntwo\nthree\n")

        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        let writer = try ChildProcess(["/bin/sh", "-c", "printf piped"], standardOutput: .descriptor(ends[1]))
        close(ends[1])
        #expect(writer.wait() == 0)
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { read(ends[0], $0.baseAddress, $0.count) }
        close(ends[0])
        #expect(count == 5 && String(decoding: buffer[..<5], as: UTF8.self) == "piped")
    }

    /// `.descriptor(0)` for standard output while standard input comes from a file: the file's dup2 onto 0 must not
    /// change what standard output gets (this process's descriptor 0).
    @Test func standardDescriptorAsSourceIsNotClobbered() throws {
        let ours = try #require(link(of: "/proc/self/fd/0"), "this test needs descriptor 0 open")
        let input = try temporaryPath("in")
        let report = try temporaryPath("report")
        defer { unlink(input); unlink(report) }
        try write("", to: input)
        let child = try ChildProcess(
            ["/bin/sh", "-c", "links=$(readlink /proc/$$/fd/1 /proc/$$/fd/0); echo \"$links\" >&2"],
            standardInput: .file(input),
            standardOutput: .descriptor(0),
            standardError: .file(report)
        )
        #expect(child.wait() == 0)
        #expect(contents(of: report) == "\(ours)\n\(input)\n")
    }

    /// A descriptor of this process opened without close-on-exec is still closed in the child.
    @Test func otherDescriptorsAreNotInherited() throws {
        let fd = open("/dev/null", O_RDONLY)  // inheritable on purpose
        try #require(fd > 2)
        defer { close(fd) }
        let check = "[ -e /proc/self/fd/$0 ]"
        #expect(try ChildProcess.run(["/bin/sh", "-c", check, "\(fd)"]).status == 1)
        #expect(try ChildProcess.run(["/bin/sh", "-c", check, "2"]).status == 0)  // the check itself works
    }
}

/// Where the symbolic link at `path` points, nil if it is not one.
func link(of path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = buffer.withUnsafeMutableBufferPointer { readlink(path, $0.baseAddress!, $0.count) }
    guard count >= 0 else { return nil }
    return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension String {
    var trimmingWhitespace: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
