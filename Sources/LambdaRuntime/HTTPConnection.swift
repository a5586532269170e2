#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One HTTP/1.1 exchange over a fresh TCP connection: connect, send the request, read the response. Blocking; the
/// Runtime API is on loopback, so this is all the HTTP a runtime needs. Call it off Swift's cooperative pool.
enum HTTPConnection {
    /// Sends `request` to `host:port` and returns the response. `timeout` bounds each send and receive; nil waits
    /// as long as it takes (the Runtime API's `next` blocks until an event comes).
    static func exchange(_ request: HTTPRequest, host: String, port: UInt16, timeout: Duration?) throws(HTTPError) -> HTTPResponse {
        let fd = try openConnection(host: host, port: port)
        defer { close(fd) }
        if let timeout {
            var value = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
        let bytes = request.serialized(host: "\(host):\(port)")
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw HTTPError("sending \(request.method) \(request.path) failed: \(String(cString: strerror(errno)))") }
            sent += count
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else {
                let reason = errno == EAGAIN ? "no answer in time" : String(cString: strerror(errno))
                throw HTTPError("reading the response to \(request.method) \(request.path) failed: \(reason)")
            }
            received += buffer[0..<count]
            guard received.count <= HTTPResponse.maximumSize else {
                throw HTTPError("the response to \(request.method) \(request.path) is larger than \(HTTPResponse.maximumSize) bytes")
            }
            if let response = try HTTPResponse.parse(received, atEnd: count == 0) { return response }
        }
    }

    /// A connected TCP socket to `host:port` (a name is looked up; the first address that answers wins).
    private static func openConnection(host: String, port: UInt16) throws(HTTPError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else { throw HTTPError("cannot resolve '\(host)': \(String(cString: gai_strerror(status)))") }
        defer { freeaddrinfo(list) }
        var failure = ECONNREFUSED
        var entry = list
        while let info = entry?.pointee {
            entry = info.ai_next
            let fd = socket(info.ai_family, info.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.ai_protocol)
            guard fd >= 0 else { failure = errno; continue }
            if connect(fd, info.ai_addr, info.ai_addrlen) == 0 { return fd }
            failure = errno
            close(fd)
        }
        throw HTTPError("cannot connect to \(host):\(port): \(String(cString: strerror(failure)))")
    }
}
