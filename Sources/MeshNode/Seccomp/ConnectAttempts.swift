import CNodeSupport
import Glibc
import Synchronization
import WireFormat

/// The connects to mesh addresses the node is making for its app, so that one connect() of the app makes one link
/// however often a signal interrupts it. A signal cancels the trapped call (the kernel forgets the notification)
/// and the app calls connect() again: the kernel restarts it under SA_RESTART (Go's SIGURG preemption), or the app
/// retries after EINTR. That call joins the attempt of the same socket (by cookie) and target. A link that comes up
/// while no call waits (the app is in its signal handler) is kept for the retry, ``Timing/Choice/unclaimedConnect``
/// at most.
///
/// The app sees what Linux gives a blocking socket: a retry while the connect is in progress waits for it; the
/// first retry after it completed unseen (interrupted just as the socket went in) returns 0, later ones EISCONN.
final class ConnectAttempts: Sendable {
    /// One connect: the app's socket and its target.
    struct Key: Hashable, Sendable {
        let cookie: UInt64
        let address: IPv4Address
        let port: UInt16
    }

    /// What a trapped connect does: start building the link (this attempt's `serial`), or wait for the one that is
    /// being built (or was, for an earlier call that the app gave up).
    enum Start: Equatable {
        case build(serial: UInt64)
        case joined
    }

    private struct Attempt {
        let serial: UInt64
        /// Whether the app's descriptor is close-on-exec (read once: every call names the same socket).
        let closeOnExec: Bool
        /// Calls the app made for this connect, oldest first; all but the last were interrupted if one thread made
        /// them, or they are another thread's connect on the same socket.
        var waiting: [TrappedCall]
        var outcome: Result<Link, SocketError>?
    }

    private struct State {
        var attempts: [Key: Attempt] = [:]
        var serial: UInt64 = 0
        /// Cookies of link sockets in the app whose connect did not return to the app (the socket went in, the
        /// answer found the call interrupted).
        var unseen: Set<UInt64> = []
    }

    private let state = Mutex(State())

    /// A trapped connect for `key`: the first makes an attempt (the caller builds the link and calls
    /// ``finish(_:serial:outcome:)``); a retry joins it, and gets a link that is already up at once.
    func begin(_ call: TrappedCall, key: Key, closeOnExec: Bool) -> Start {
        state.withLock { state in
            if var attempt = state.attempts[key] {
                attempt.waiting.append(call)
                state.attempts[key] = Self.settle(&attempt, unseen: &state.unseen) ? nil : attempt
                return .joined
            }
            state.serial += 1
            state.attempts[key] = Attempt(serial: state.serial, closeOnExec: closeOnExec, waiting: [call])
            return .build(serial: state.serial)
        }
    }

    /// The link (or the error) for an attempt: handed to the app's waiting call. False when no call waits any
    /// more: the outcome is kept for a retry until ``expire(_:serial:)``.
    func finish(_ key: Key, serial: UInt64, outcome: Result<Link, SocketError>) -> Bool {
        state.withLock { state in
            guard var attempt = state.attempts[key], attempt.serial == serial else { return true }
            attempt.outcome = outcome
            let settled = Self.settle(&attempt, unseen: &state.unseen)
            state.attempts[key] = settled ? nil : attempt
            return settled
        }
    }

    /// Forgets an attempt whose outcome no retry claimed, closing its link if it made one. True if there was one.
    func expire(_ key: Key, serial: UInt64) -> Bool {
        state.withLock { state in
            guard let attempt = state.attempts[key], attempt.serial == serial, let outcome = attempt.outcome
            else { return false }
            state.attempts[key] = nil
            if case .success(let link) = outcome { close(link.fd) }
            return true
        }
    }

    /// A connect on a link socket the app already holds: true (return 0) the first time after a connect that did
    /// not return to the app, else false (EISCONN), as Linux answers a connect on a socket that is connected.
    func claimUnseen(cookie: UInt64) -> Bool {
        state.withLock { $0.unseen.remove(cookie) != nil }
    }

    /// Hands the outcome to the waiting calls. A link goes into the app through the first call still pending (at
    /// its descriptor number, replacing the app's socket) and the node's copy is closed; an error goes to every
    /// waiting call. True when a call got it; false when none was pending (or no outcome yet).
    private static func settle(_ attempt: inout Attempt, unseen: inout Set<UInt64>) -> Bool {
        guard let outcome = attempt.outcome else { return false }
        defer { attempt.waiting.removeAll() }
        switch outcome {
        case .failure(let error):
            return attempt.waiting.map { $0.answer(-1, error: error.code) }.contains(true)
        case .success(let link):
            for (index, call) in attempt.waiting.enumerated() {
                guard call.inject(link.fd, at: call.fd(0), closeOnExec: attempt.closeOnExec, returning: false) != nil
                else { continue }  // interrupted: a later call may still wait
                if !call.answer(0) { unseen.insert(boxer_socket_cookie(link.fd)) }
                // Another thread's connect on the same socket: the kernel returns 0 to both.
                attempt.waiting[(index + 1)...].forEach { $0.succeed() }
                close(link.fd)  // the app holds the only copy now: its close() sends the FIN
                return true
            }
            return false
        }
    }
}
