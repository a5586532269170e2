import ChildProcess
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Programs that cannot start: the error names the program and says why, with the status a shell would give.
@Suite(.timeLimit(.minutes(2))) struct SpawnErrorTests {
    @Test func missingProgramInPath() {
        #expect {
            try ChildProcess(["boxer-mesh-no-such-program"])
        } throws: { error in
            let error = error as! SpawnError
            return error.program == "boxer-mesh-no-such-program" && error.code == ENOENT && error.exitStatus == 127
                && error.description == "cannot start 'boxer-mesh-no-such-program': no such file (looked up in PATH)"
        }
    }

    @Test func missingProgramByPath() {
        #expect(throws: SpawnError(program: "/nonexistent/program", code: ENOENT)) {
            try ChildProcess.run(["/nonexistent/program"])
        }
        #expect(SpawnError(program: "/nonexistent/program", code: ENOENT).description
            == "cannot start '/nonexistent/program': no such file")
    }

    @Test func notExecutable() throws {
        let path = try temporaryPath("script")
        defer { unlink(path) }
        try write("#!/bin/sh\nexit 0\n", to: path)
        chmod(path, 0o644)  // no execute bit: even root cannot exec it
        #expect {
            try ChildProcess([path])
        } throws: { error in
            let error = error as! SpawnError
            return error.code == EACCES && error.exitStatus == 126 && error.description.contains("permission denied")
        }
    }

    @Test func noArguments() {
        #expect {
            try ChildProcess([])
        } throws: { error in
            (error as! SpawnError).code == EINVAL && "\(error)" == "cannot start a process: no program given"
        }
    }

    @Test func unopenableRedirection() {
        #expect {
            try ChildProcess(["true"], standardOutput: .file("/nonexistent-folder/out"))
        } throws: { error in
            let error = error as! SpawnError
            return error.code == ENOENT && error.exitStatus == 1
                && error.description
                    == "cannot start 'true': opening /nonexistent-folder/out for standard output: no such file"
        }
        #expect(throws: SpawnError.self) { try ChildProcess(["true"], standardInput: .descriptor(-1)) }
    }
}

/// A fresh path in the temporary folder (nothing there yet).
func temporaryPath(_ tag: String) throws -> String {
    var template = Array("/tmp/child-process-test-\(tag)-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    try #require(fd >= 0)
    close(fd)
    let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    unlink(path)
    return path
}

/// Writes `text` to `path`, replacing it.
func write(_ text: String, to path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    try #require(fd >= 0)
    defer { close(fd) }
    let bytes = Array(text.utf8)
    try #require(bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count)
}

/// The contents of `path` as text, nil if it cannot be read.
func contents(of path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while case let count = chunk.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }), count > 0 {
        bytes += chunk[..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}
