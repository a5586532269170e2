#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SwiftProtobuf
import WireFormat

/// The Lambda Runtime API, version 2018-06-01, at `$AWS_LAMBDA_RUNTIME_API` (plain HTTP on the function's
/// loopback). One invocation at a time: `next`, then a response or an error for it, then `next` again.
public struct RuntimeAPI: Sendable {
    public let host: String
    public let port: UInt16

    /// The environment variable the platform sets to the API's `HOST:PORT`.
    public static let environmentVariable = "AWS_LAMBDA_RUNTIME_API"
    static let base = "/2018-06-01/runtime"
    /// How long a post may take: the API answers at once; a silent one is broken.
    static let postTimeout = Duration.seconds(10)

    /// Parses `HOST:PORT` as the platform gives it.
    public init(parsing text: String) throws(HTTPError) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0,
            colon > text.startIndex
        else { throw HTTPError("\(Self.environmentVariable) '\(text)' is not HOST:PORT") }
        host = String(text[..<colon]).trimmingBrackets
        self.port = port
    }

    /// Waits for the next invocation (no time limit: the platform may freeze the function until one comes).
    public func next() throws(RuntimeAPIError) -> Invocation {
        let response = try exchange(HTTPRequest(method: "GET", path: "\(Self.base)/invocation/next"), timeout: nil)
        guard response.status == 200 else { throw RuntimeAPIError(response, asking: "for the next invocation") }
        guard let id = response.header("Lambda-Runtime-Aws-Request-Id"), !id.isEmpty else {
            throw RuntimeAPIError(status: 200, message: "the next invocation came without a Lambda-Runtime-Aws-Request-Id")
        }
        let deadline = response.header("Lambda-Runtime-Deadline-Ms").flatMap { Int64($0) }
        return Invocation(
            requestID: id, deadlineUnixMs: deadline, functionARN: response.header("Lambda-Runtime-Invoked-Function-Arn"),
            traceID: response.header("Lambda-Runtime-Trace-Id"), clientContext: response.header("Lambda-Runtime-Client-Context"),
            cognitoIdentity: response.header("Lambda-Runtime-Cognito-Identity"), event: response.body)
    }

    /// Posts the result of invocation `id` (202 Accepted).
    public func respond(to id: String, with body: [UInt8]) throws(RuntimeAPIError) {
        try post("\(Self.base)/invocation/\(Self.pathSegment(id))/response", body: body, headers: [("Content-Type", "application/json")],
            what: "the response of \(id)")
    }

    /// Posts an error as the result of invocation `id` (202 Accepted).
    public func fail(_ id: String, with error: Boxermesh_V1_LambdaError) throws(RuntimeAPIError) {
        try postError("\(Self.base)/invocation/\(Self.pathSegment(id))/error", error, what: "the error of \(id)")
    }

    /// Reports an error before the first invocation (202 Accepted); the runtime exits after it.
    public func initFailed(_ error: Boxermesh_V1_LambdaError) throws(RuntimeAPIError) {
        try postError("\(Self.base)/init/error", error, what: "the init error")
    }

    private func postError(_ path: String, _ error: Boxermesh_V1_LambdaError, what: String) throws(RuntimeAPIError) {
        let body = (try? error.jsonUTF8Bytes()) ?? []
        try post(path, body: body, headers: [
            ("Content-Type", "application/vnd.aws.lambda.error+json"), ("Lambda-Runtime-Function-Error-Type", error.errorType),
        ], what: what)
    }

    private func post(_ path: String, body: [UInt8], headers: [(String, String)], what: String) throws(RuntimeAPIError) {
        let request = HTTPRequest(method: "POST", path: path, headers: headers.map { (name: $0.0, value: $0.1) }, body: body)
        let response = try exchange(request, timeout: Self.postTimeout)
        guard response.status == 202 else { throw RuntimeAPIError(response, asking: "to accept \(what)") }
    }

    private func exchange(_ request: HTTPRequest, timeout: Duration?) throws(RuntimeAPIError) -> HTTPResponse {
        do {
            return try HTTPConnection.exchange(request, host: host, port: port, timeout: timeout)
        } catch {
            throw RuntimeAPIError(status: nil, message: error.description)
        }
    }

    /// A request id as one path segment: anything but unreserved characters percent-encoded.
    static func pathSegment(_ id: String) -> String {
        var segment = ""
        for byte in id.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                segment.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                segment += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return segment
    }
}

/// The Runtime API refused a request or could not be reached. A status of 500 (or none: the API is gone) means the
/// runtime should exit, as the API documents; 400, 403 and 413 concern only the request at hand.
public struct RuntimeAPIError: Error, CustomStringConvertible, Sendable {
    /// The HTTP status, nil when no response came.
    public var status: Int?
    public var message: String

    init(status: Int?, message: String) {
        self.status = status
        self.message = message
    }

    init(_ response: HTTPResponse, asking what: String) {
        let detail = (try? Boxermesh_V1_LambdaError(jsonUTF8Bytes: response.body, options: .ignoringUnknownFields))
            .map { "\($0.errorType): \($0.errorMessage)" } ?? String(decoding: response.body.prefix(200), as: UTF8.self)
        self.init(status: response.status, message: "the Runtime API refused \(what) with status \(response.status) (\(detail))")
    }

    /// Whether the runtime cannot go on: the API says its container is broken, or it cannot be reached.
    public var isFatal: Bool { status == nil || status == 500 }

    public var description: String { message }
}

extension JSONDecodingOptions {
    static var ignoringUnknownFields: JSONDecodingOptions {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        return options
    }
}

extension String {
    fileprivate var trimmingBrackets: String {
        hasPrefix("[") && hasSuffix("]") ? String(dropFirst().dropLast()) : self
    }

    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
