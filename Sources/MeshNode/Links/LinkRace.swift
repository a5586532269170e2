import Glibc
import Synchronization

/// The accepting side's wait for a connection that comes up either direct (its own punch) or relayed (the
/// connecting side gave up punching and opened it on the relay): the first wins, and a socket that comes later
/// is reset. Punching alone failing decides nothing while a relayed open may still come.
final class LinkRace: Sendable {
    enum Outcome: Sendable {
        case direct(Int32)
        case relay(Int32)
        case failed(SocketError)
    }

    private struct State {
        var outcome: Outcome?
        var punchFailure: SocketError?
        var relayPossible = true
        var waiter: CheckedContinuation<Outcome, Never>?
    }

    private let state = Mutex(State())

    var isDecided: Bool { state.withLock { $0.outcome != nil } }

    /// A proven direct socket; false when the race was already decided (the caller resets the socket).
    func direct(_ fd: Int32) -> Bool { decide(.direct(fd)) }

    /// The relay's answer: the app's socket of the relayed connection, or why there will be none (the
    /// connecting side gave up, or the node stops): then the connection has failed.
    func relayed(_ result: Result<Int32, SocketError>) {
        switch result {
        case .success(let fd):
            if !decide(.relay(fd)) { RelaySockets.reset(fd) }
        case .failure(let error):
            state.withLock { $0.relayPossible = false }
            decide(.failed(error))
        }
    }

    /// This node does not relay: a failed punch is the end.
    func noRelay() {
        let failure = state.withLock { state in
            state.relayPossible = false
            return state.punchFailure
        }
        if let failure { decide(.failed(failure)) }
    }

    func punchFailed(_ error: SocketError) {
        let relayPossible = state.withLock { state in
            state.punchFailure = error
            return state.relayPossible
        }
        if !relayPossible { decide(.failed(error)) }
    }

    /// Waits for the outcome, at most `timeout`.
    func outcome(timeout: Duration) async -> Outcome {
        let timer = Task {
            try await Task.sleep(for: timeout)
            decide(.failed(SocketError(ETIMEDOUT, "no direct or relayed connection within \(timeout)")))
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            let decided = state.withLock { state in
                if state.outcome == nil { state.waiter = continuation }
                return state.outcome
            }
            if let decided { continuation.resume(returning: decided) }
        }
    }

    @discardableResult
    private func decide(_ outcome: Outcome) -> Bool {
        let waiter: CheckedContinuation<Outcome, Never>?? = state.withLock { state in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiter = nil }
            return .some(state.waiter)
        }
        guard let waiter else { return false }
        waiter?.resume(returning: outcome)
        return true
    }
}
