import Glibc
import Synchronization

/// Relayed connections the accepting node waits for, shared by the link manager (which registers one before it
/// answers the broker) and the relay pump (which takes it when the broker's open arrives).
///
/// A table rather than a command posted to the pump: the broker's open is caused by our answer, so it can reach
/// the pump's socket before a posted command is handled (the pump drains its socket in one go, and a message
/// that arrives meanwhile is read in the same pass). A registration made before the answer is sent is always
/// there when the open is read.
final class RelayExpectations: Sendable {
    typealias Deliver = @Sendable (Result<Int32, SocketError>) -> Void

    struct Expectation: Sendable {
        let context: RelayStreamContext
        let deliver: Deliver
    }

    private struct State {
        var waiting: [UInt64: Expectation] = [:]
        /// The pump stopped (or never ran): nothing will be delivered any more.
        var closed = false
    }

    private let state = Mutex(State())

    /// Waits for `id`; `deliver` gets the app's socket (on the pump's thread) or why there is none. Delivers the
    /// failure at once when the relay no longer runs.
    func expect(_ id: UInt64, _ expectation: Expectation) {
        let accepted = state.withLock { state in
            guard !state.closed else { return false }
            state.waiting[id] = expectation
            return true
        }
        if !accepted { expectation.deliver(.failure(SocketError(ENETDOWN, "the relay is not running"))) }
    }

    /// No longer waits for `id` (a direct link won); a later open is reset.
    func cancel(_ id: UInt64) {
        _ = state.withLock { $0.waiting.removeValue(forKey: id) }
    }

    /// The waiter for `id`, removed from the table.
    func take(_ id: UInt64) -> Expectation? {
        state.withLock { $0.waiting.removeValue(forKey: id) }
    }

    /// The relay stops: every waiter hears `error`, and later ones at once.
    func close(_ error: SocketError) {
        let waiting = state.withLock { state in
            state.closed = true
            defer { state.waiting = [:] }
            return state.waiting
        }
        for expectation in waiting.values { expectation.deliver(.failure(error)) }
    }
}
