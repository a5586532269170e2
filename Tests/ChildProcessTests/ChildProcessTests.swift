import ChildProcess
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Starting, signalling and waiting for one child.
@Suite(.timeLimit(.minutes(2))) struct ChildProcessTests {
    @Test func exitCodes() async throws {
        #expect(try ChildProcess(["true"]).wait() == 0)  // found through PATH
        #expect(try ChildProcess(["false"]).wait() == 1)
        #expect(try ChildProcess(["/bin/sh", "-c", "exit 3"]).wait() == 3)
        #expect(await (try ChildProcess(["/bin/sh", "-c", "exit 254"])).exitStatus() == 254)
    }

    @Test func signalsReportedAs128PlusN() async throws {
        #expect(try ChildProcess(["/bin/sh", "-c", "kill -TERM $$"]).wait() == 128 + SIGTERM)
        let sleeper = try ChildProcess(["sleep", "30"])
        #expect(sleeper.isRunning)
        #expect(sleeper.send(SIGKILL))
        #expect(await sleeper.exitStatus() == 128 + SIGKILL)
        #expect(!sleeper.isRunning)
        #expect(sleeper.status == 128 + SIGKILL)
    }

    @Test func waitWithTimeout() throws {
        let sleeper = try ChildProcess(["sleep", "30"])
        let start = ContinuousClock.now
        #expect(sleeper.wait(timeout: .milliseconds(200)) == nil)
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(200) && waited < .seconds(3), "waited \(waited)")
        #expect(sleeper.isRunning && sleeper.status == nil)
        sleeper.send(SIGTERM)
        #expect(sleeper.wait(timeout: .seconds(5)) == 128 + SIGTERM)
        #expect(sleeper.wait(timeout: .zero) == 128 + SIGTERM)
    }

    /// Several callers, blocking and async, are all waiting when the child exits, and all get its status; the
    /// child is reaped once (by the watcher), and nothing is sent to its pid after that.
    @Test func manyWaitersOneReaper() async throws {
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        let child = try ChildProcess(["/bin/sh", "-c", "read line; exit 7"], standardInput: .descriptor(ends[0]))
        close(ends[0])
        let writeEnd = ends[1]
        let blocking = BlockingWait(child)
        let started = Counter()
        let statuses = await withTaskGroup(of: Int32.self) { group in
            for _ in 0..<5 {
                group.addTask {
                    started.increment()
                    return await child.exitStatus()
                }
            }
            while started.value < 5 { try? await Task.sleep(for: .milliseconds(10)) }
            try? await Task.sleep(for: .milliseconds(200))  // let them reach exitStatus()
            #expect(child.isRunning)
            close(writeEnd)  // end of file: the child exits 7
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(statuses == Array(repeating: 7, count: 5))
        #expect(blocking.result() == 7)
        #expect(child.wait() == 7)
        var raw: Int32 = 0
        #expect(waitpid(child.pid, &raw, WNOHANG) == -1 && errno == ECHILD, "already reaped by the watcher")
        #expect(!child.send(SIGKILL))
    }

    @Test func environmentIsExactlyTheGivenOne() throws {
        let given = try ChildProcess.run(["/usr/bin/env"], environment: ["GREETING": "hello world", "EMPTY": ""])
        #expect(given.standardOutput.split(separator: "\n").sorted() == ["EMPTY=", "GREETING=hello world"])

        let inherited = try ChildProcess.run(["/bin/sh", "-c", "printf %s \"$PATH\""])
        #expect(inherited.standardOutput == String(cString: getenv("PATH")))
    }

    @Test func argumentsArePassedVerbatim() throws {
        let arguments = ["with space", "", "quote'\"", "ünï"]
        let script = #"for a in "$@"; do printf '[%s]' "$a"; done"#
        let result = try ChildProcess.run(["/bin/sh", "-c", script, "sh"] + arguments)
        #expect(result.standardOutput == "[with space][][quote'\"][ünï]")
    }
}

/// A count that tasks can share.
final class Counter: Sendable {
    private let count = Mutex(0)
    var value: Int { count.withLock { $0 } }
    func increment() { count.withLock { $0 += 1 } }
}

/// `wait()` on a thread of its own, with a way to collect its result.
final class BlockingWait: @unchecked Sendable {
    private var status: Int32?
    private var thread = pthread_t()

    init(_ child: ChildProcess) {
        let context = Unmanaged.passRetained(Box { [self] in status = child.wait() }).toOpaque()
        pthread_create(&thread, nil, { context in
            Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
    }

    /// Joins the thread and returns what `wait()` returned.
    func result() -> Int32? {
        pthread_join(thread, nil)
        return status
    }

    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
}
