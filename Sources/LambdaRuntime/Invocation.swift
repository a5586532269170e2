import Glibc

/// One invocation as `GET /runtime/invocation/next` hands it out: its request id, deadline, the other documented
/// headers, and the event.
public struct Invocation: Sendable {
    /// `Lambda-Runtime-Aws-Request-Id`: names the invocation in the response or error posted for it.
    public var requestID: String
    /// `Lambda-Runtime-Deadline-Ms`: when the function times out, in milliseconds since the Unix epoch; nil when the
    /// header was missing or not a number.
    public var deadlineUnixMs: Int64?
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    public var functionARN: String?
    /// `Lambda-Runtime-Trace-Id`: the X-Ray tracing header, which a runtime puts in `_X_AMZN_TRACE_ID`.
    public var traceID: String?
    /// `Lambda-Runtime-Client-Context` and `Lambda-Runtime-Cognito-Identity` (AWS Mobile SDK invocations).
    public var clientContext: String?
    public var cognitoIdentity: String?
    /// The event, as the invoker sent it.
    public var event: [UInt8]

    /// The deadline on this machine's monotonic clock.
    public var deadline: ContinuousClock.Instant? {
        deadlineUnixMs.map { .now + .milliseconds($0 - Self.unixMilliseconds()) }
    }

    static func unixMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
