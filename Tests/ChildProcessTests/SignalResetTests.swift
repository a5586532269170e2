import ChildProcess
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A child of a process that ignores or blocks a signal can still be ended by it.
///
/// Serialized: each test changes a signal's disposition or mask in this process for a moment.
@Suite(.serialized, .timeLimit(.minutes(2))) struct SignalResetTests {
    /// The node ignores SIGINT (it relays it); an ignored disposition survives exec, so without the reset the app
    /// could not be interrupted. The child started without the reset is the control: it shrugs SIGINT off.
    @Test func ignoredSignalIsResetToDefault() throws {
        let previous = signal(SIGINT, SIG_IGN)
        let reset: ChildProcess
        let control: ChildProcess
        do {
            defer { signal(SIGINT, previous) }
            reset = try ChildProcess(["sleep", "30"], resettingSignals: [SIGINT, SIGTERM])
            control = try ChildProcess(["sleep", "30"])
        }
        defer { control.send(SIGKILL) }
        reset.send(SIGINT)
        control.send(SIGINT)
        #expect(reset.wait(timeout: .seconds(5)) == 128 + SIGINT)
        #expect(control.wait(timeout: .milliseconds(500)) == nil, "the control still ignores SIGINT")
    }

    /// A signal blocked in the spawning thread would stay blocked in the child (the mask survives exec); the child
    /// always starts with an empty mask. (Swift concurrency's threads block nearly every signal, so this matters
    /// for every child started from async code.)
    @Test func blockedSignalIsUnblocked() throws {
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        var previous = sigset_t()
        let child: ChildProcess
        do {
            pthread_sigmask(SIG_BLOCK, &blocked, &previous)
            defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
            child = try ChildProcess(["sleep", "30"])
        }
        defer { child.send(SIGKILL) }
        child.send(SIGTERM)
        #expect(child.wait(timeout: .seconds(5)) == 128 + SIGTERM)
    }
}
