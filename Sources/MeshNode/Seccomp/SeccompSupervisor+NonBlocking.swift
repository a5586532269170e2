import CNodeSupport
import CSeccomp
import Glibc
import WireFormat

/// Non-blocking connects: the call returns EINPROGRESS at once with a stand-in at the app's descriptor
/// (``StandIns``), and the link takes the stand-in's place when the app asks how the connect went. The app's epoll
/// registrations follow each switch, so an event loop that registered its socket before connect() (nginx, libuv,
/// Go's poller) keeps them.
extension SeccompSupervisor {
    /// Starts a non-blocking connect to a mesh address; `original` is the node's copy of the app's socket, which
    /// this closes.
    func connectInBackground(_ trapped: TrappedCall, original: Int32, to ipv4: IPv4Address, port: UInt16) {
        let standIn: (appEnd: Int32, cookie: UInt64)
        do throws(SocketError) { standIn = try standIns.open() } catch {
            close(original)
            return trapped.fail(error.code)
        }
        Self.setNonBlocking(standIn.appEnd, true)
        Self.carryOptions(from: original, to: standIn.appEnd)
        carryRegistrations(trapped, from: original, to: standIn.appEnd)
        let injected = trapped.inject(standIn.appEnd, at: trapped.fd(0), closeOnExec: trapped.isCloseOnExec(0), returning: false) != nil
        // Before the answer: with the last copy of the replaced socket gone, so are its events in the app's epoll.
        close(original)
        guard injected else {
            return standIns.discard(standIn.cookie)  // interrupted: the app's retry comes with its own socket
        }
        // Interrupted here: the app's retry finds the stand-in (EALREADY), or it waits for writability; both work.
        _ = trapped.answer(-1, error: EINPROGRESS)
        let (links, standIns) = (links, standIns)
        Task {
            do throws(SocketError) {
                let link = try await links.connect(to: ipv4, port: port)
                Self.setNonBlocking(link.fd, true)
                standIns.finish(standIn.cookie, .success(link))
            } catch {
                links.logConnectFailure(to: ipv4, port: port, error)
                standIns.finish(standIn.cookie, .failure(error))
            }
        }
    }

    /// getsockopt(fd, SOL_SOCKET, SO_ERROR), how an app learns that its non-blocking connect ended: on a stand-in
    /// whose link is up, the link goes in and the answer is 0; after a failed connect, its error. Anything else —
    /// a stand-in still connecting (0, as for a socket in SYN_SENT), any other socket — the kernel answers.
    func socketError(_ trapped: TrappedCall) {
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        let stage = question(trapped, standIn: socket)
        close(socket)  // see connectInBackground: before the answer
        let code: Int32
        switch stage {
        case .ready: code = 0
        case .failed(let error): code = error.code
        case nil, .building, .bridged: return trapped.proceed()
        }
        let bytes = withUnsafeBytes(of: code) { Array($0) }
        trapped.store(bytes, pointer: 3, lengthPointer: 4) ? trapped.succeed() : trapped.fail(EFAULT)
    }

    /// The app asks about its socket `socket` (the node's copy of descriptor 0 of the call): where its non-blocking
    /// connect stands, nil if it is no stand-in. A link that is up goes into the app in the stand-in's place; an
    /// error is told once, if `tellsError`.
    func question(_ trapped: TrappedCall, standIn socket: Int32, tellsError: Bool = true) -> StandIns.Stage? {
        let cookie = boxer_socket_cookie(socket)
        guard cookie != 0 else { return nil }
        return standIns.question(cookie, tellsError: tellsError) { link in
            Self.carryOptions(from: socket, to: link.fd)
            carryRegistrations(trapped, from: socket, to: link.fd)
            guard trapped.inject(link.fd, at: trapped.fd(0), closeOnExec: trapped.isCloseOnExec(0), returning: false) != nil
            else { return false }
            remember(link)
            close(link.fd)  // the app holds the only copy now
            return true
        }
    }

    /// The socket options the app set on `from` (those ``boxer_socket_options_read`` knows), set on `to`.
    static func carryOptions(from: Int32, to: Int32) { apply(socketOptions(of: from), to: to) }

    /// The options the app set on `fd`, for the socket that replaces it.
    static func socketOptions(of fd: Int32) -> boxer_socket_options {
        var options = boxer_socket_options()
        boxer_socket_options_read(fd, &options)
        return options
    }

    static func apply(_ options: boxer_socket_options, to fd: Int32) {
        withUnsafePointer(to: options) { boxer_socket_options_apply($0, fd) }
    }

    /// Registers `to` in every epoll instance of the app that watches its descriptor (argument 0) as `from`.
    private func carryRegistrations(_ trapped: TrappedCall, from: Int32, to: Int32) {
        guard boxer_sc_carry_epoll(trapped.pid, trapped.fd(0), from, to) < 0 else { return }
        logger.warning(
            "an epoll registration of the app's socket \(trapped.fd(0)) did not follow its connect: \(String(cString: strerror(errno)))")
    }
}
