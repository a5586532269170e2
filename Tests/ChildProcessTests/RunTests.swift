import ChildProcess
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `ChildProcess.run`: capturing output, input, time limits.
@Suite(.timeLimit(.minutes(2))) struct RunTests {
    @Test func capturesStandardOutputAndErrorSeparately() throws {
        let result = try ChildProcess.run(["/bin/sh", "-c", "echo out; echo 'it broke' >&2; exit 3"])
        #expect(result.status == 3 && !result.timedOut)
        #expect(result.standardOutput == "out\n")
        #expect(result.standardError == "it broke\n")
    }

    /// Far more than a pipe holds (64 KiB) on both streams at once: a capture that reads one stream at a time
    /// through pipes would deadlock here.
    @Test func capturesMegabytesWithoutDeadlock() throws {
        let script = "head -c 6000000 /dev/zero | tr '\\0' x; head -c 3000000 /dev/zero | tr '\\0' y >&2; echo end"
        let result = try ChildProcess.run(["/bin/sh", "-c", script], timeout: .seconds(60))
        #expect(!result.timedOut)
        #expect(result.status == 0)
        #expect(result.standardOutput.utf8.count == 6_000_004)
        #expect(result.standardOutput.hasSuffix("xxend\n"))
        #expect(result.standardError.utf8.count == 3_000_000)
        #expect(result.standardError.utf8.allSatisfy { $0 == UInt8(ascii: "y") })
    }

    @Test func input() throws {
        let result = try ChildProcess.run(["cat"], input: "hello\nworld\n")
        #expect(result.standardOutput == "hello\nworld\n")
        let none = try ChildProcess.run(["cat"])  // /dev/null: end of file at once, no hang
        #expect(none.status == 0 && none.standardOutput.isEmpty)
    }

    @Test func timeoutKills() throws {
        let start = ContinuousClock.now
        let result = try ChildProcess.run(["sleep", "30"], timeout: .milliseconds(200))
        #expect(result.timedOut)
        #expect(result.status == 128 + SIGKILL)
        #expect(ContinuousClock.now - start < .seconds(5))

        let quick = try ChildProcess.run(["/bin/sh", "-c", "echo done"], timeout: .seconds(10))
        #expect(!quick.timedOut && quick.status == 0 && quick.standardOutput == "done\n")
    }

    /// A background grandchild that keeps standard output open must not keep `run` waiting (it would with a pipe
    /// read to end of file).
    @Test func backgroundGrandchildDoesNotHoldTheCapture() throws {
        let start = ContinuousClock.now
        let result = try ChildProcess.run(["/bin/sh", "-c", "sleep 5 & echo started"], timeout: .seconds(20))
        #expect(result.status == 0 && result.standardOutput == "started\n")
        #expect(ContinuousClock.now - start < .seconds(4))
    }
}
