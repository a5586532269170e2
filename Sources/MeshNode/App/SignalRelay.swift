import Dispatch
import FoundationEssentials
import Glibc
import Synchronization

/// Catches the signals a process manager sends the node and hands each to the current handler: while joining,
/// a handler that aborts the join; once the app runs, one that forwards to the app.
final class SignalRelay: Sendable {
    /// Forwarded to the app. INT, TERM, HUP and QUIT also abort a join that is still under way.
    static let relayed: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
    /// The signals that mean "stop".
    static let stopping: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

    /// In a struct, not a bare closure: read out of a Mutex, a bare function value gains two reabstraction thunks
    /// per access (see ControlClient's push handler), so each relayed signal would call one level deeper.
    private struct Handler: Sendable {
        let handle: @Sendable (Int32) -> Void
    }

    private let handler = Mutex(Handler { _ in })
    private let lastStop = Atomic<Int32>(0)
    private nonisolated(unsafe) let sources: [any DispatchSourceSignal]

    init() {
        var sources: [any DispatchSourceSignal] = []
        for number in Self.relayed {
            signal(number, SIG_IGN)  // Dispatch sees the signal; the default action (exit) must not run
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            sources.append(source)
        }
        self.sources = sources
        for (source, number) in zip(sources, Self.relayed) {
            source.setEventHandler { [self] in
                if Self.stopping.contains(number) { lastStop.store(number, ordering: .relaxed) }
                handler.withLock { $0 }.handle(number)
            }
            source.resume()
        }
    }

    /// Stops catching: the signals get their default actions back, and the relay is released. A process that runs
    /// nodes one after another (the Lambda runtime) is not left ignoring them between runs, nor piling up handlers.
    func stop() {
        for (source, number) in zip(sources, Self.relayed) {
            source.cancel()
            signal(number, SIG_DFL)
        }
    }

    /// The last stop signal received, if any.
    var lastStopSignal: Int32? {
        let number = lastStop.load(ordering: .relaxed)
        return number == 0 ? nil : number
    }

    func onSignal(_ body: @escaping @Sendable (Int32) -> Void) {
        handler.withLock { $0 = Handler(handle: body) }
    }
}
