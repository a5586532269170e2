extension HTTPResponse {
    /// The largest response accepted: an event is at most 6 MB (a synchronous invocation's payload limit).
    static let maximumSize = 8 << 20

    /// Parses a response from the bytes received so far. Returns nil while more bytes are needed; `atEnd` says the
    /// peer closed the connection, which ends a body that has neither a length nor chunks.
    static func parse(_ bytes: [UInt8], atEnd: Bool) throws(HTTPError) -> HTTPResponse? {
        guard let headEnd = bytes.firstRange(of: [13, 10, 13, 10]) else {
            if atEnd { throw HTTPError("the connection closed before the response's headers ended") }
            return nil
        }
        let lines = String(decoding: bytes[..<headEnd.lowerBound], as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusLine = lines.first.map(String.init) ?? ""
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...599).contains(status) else {
            throw HTTPError("not an HTTP/1.1 status line: '\(statusLine.prefix(80))'")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { throw HTTPError("malformed header line '\(line.prefix(80))'") }
            let name = line[..<colon].lowercased()
            let value = String(line[line.index(after: colon)...].drop(while: { $0 == " " || $0 == "\t" }).reversed()
                .drop(while: { $0 == " " || $0 == "\t" }).reversed())
            headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        }
        let rest = Array(bytes[headEnd.upperBound...])
        let body: [UInt8]
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            guard let decoded = try dechunked(rest) else {
                if atEnd { throw HTTPError("the connection closed inside a chunked body") }
                return nil
            }
            body = decoded
        } else if let lengthText = headers["content-length"] {
            guard let length = Int(lengthText), length >= 0 else { throw HTTPError("bad Content-Length '\(lengthText)'") }
            guard rest.count >= length else {
                if atEnd { throw HTTPError("the connection closed after \(rest.count) of \(length) body bytes") }
                return nil
            }
            body = Array(rest.prefix(length))
        } else {
            guard atEnd else { return nil }
            body = rest
        }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    /// The body of a chunked transfer (RFC 9112 §7.1), or nil when its last chunk has not arrived yet.
    private static func dechunked(_ bytes: [UInt8]) throws(HTTPError) -> [UInt8]? {
        var body: [UInt8] = []
        var index = 0
        while true {
            guard let lineEnd = bytes[index...].firstRange(of: [13, 10]) else { return nil }
            let sizeText = String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self)
            guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16), size >= 0 else {
                throw HTTPError("bad chunk size '\(sizeText.prefix(20))'")
            }
            index = lineEnd.upperBound
            if size == 0 { return body }  // trailers, if any, are not needed
            guard bytes.count >= index + size + 2 else { return nil }
            body += bytes[index..<index + size]
            index += size + 2
        }
    }
}
