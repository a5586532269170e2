/// A plain HTTP/1.1 request, as the Runtime API client sends it.
struct HTTPRequest: Sendable {
    var method: String
    var path: String
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []

    /// The bytes on the wire: request line, `Host`, the given headers, `Content-Length` for a body, and
    /// `Connection: close` (one request per connection, so the response ends where the connection does).
    func serialized(host: String) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: boxer-mesh\r\nConnection: close\r\n"
        for header in headers { head += "\(header.name): \(header.value)\r\n" }
        if method != "GET" || !body.isEmpty { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + body
    }
}

/// An HTTP/1.1 response: status, headers (names lowercased) and the body, de-chunked.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    /// The value of header `name` (any case).
    func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// The response was not HTTP/1.1 as expected, or the connection failed; the message says which.
public struct HTTPError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}
