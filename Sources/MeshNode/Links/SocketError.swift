import Glibc

/// Why a socket step of the node failed — a punch, a proof, a relayed open, a loopback pair — as the app will
/// meet it: `code` is the errno its connect() (or accept) gets, `description` says what went wrong.
struct SocketError: Error, CustomStringConvertible, Sendable {
    let code: Int32
    let description: String

    init(_ code: Int32, _ description: String) {
        self.code = code
        self.description = description
    }

    /// The failure of a system call that just set errno: "`what`: strerror(errno)".
    static func lastError(_ what: String) -> SocketError {
        let code = errno
        return SocketError(code, "\(what): \(String(cString: strerror(code)))")
    }

    /// A reflector exchange's failure, with the errno the app sees when its connect depended on it.
    init(_ error: STUNClientError) {
        self.init(error.code == .refused ? ECONNREFUSED : error.code == .timeout ? ETIMEDOUT : ENETUNREACH, error.description)
    }

    /// Any other error thrown by a socket step, as an unreachable host.
    static func wrapping(_ error: any Error) -> SocketError {
        switch error {
        case let error as SocketError: error
        case let error as STUNClientError: SocketError(error)
        default: SocketError(EHOSTUNREACH, "\(error)")
        }
    }
}
