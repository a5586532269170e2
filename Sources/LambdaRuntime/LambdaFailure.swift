import WireFormat

/// Why an invocation, or the runtime's start, failed: posted to the Runtime API as the standard Lambda error body,
/// with a type a program can match and a message a person can act on.
public struct LambdaFailure: Error, CustomStringConvertible, Sendable {
    /// The `errorType`, also sent as `Lambda-Runtime-Function-Error-Type`.
    public enum Kind: String, Sendable {
        /// The environment's configuration is unusable (posted to `/runtime/init/error`).
        case invalidConfiguration = "BoxerMesh.InvalidConfiguration"
        /// The event is not a boxer-mesh event, or its values are unusable.
        case invalidEvent = "BoxerMesh.InvalidEvent"
        /// The invocation's deadline leaves less time than the grace the app gets to stop.
        case deadlineTooNear = "BoxerMesh.DeadlineTooNear"
        /// The node could not join the mesh (broker unreachable, wrong secret, name taken…).
        case joinFailed = "BoxerMesh.JoinFailed"
        /// The deadline came near while the node still joined or waited for members.
        case deadlineBeforeStart = "BoxerMesh.DeadlineBeforeStart"
        /// The command could not be started (not found, not executable).
        case launchFailed = "BoxerMesh.LaunchFailed"
        /// The command was ended by a signal the runtime did not send.
        case appCrashed = "BoxerMesh.AppCrashed"
        /// The runtime itself was stopped by a signal before the command started.
        case interrupted = "BoxerMesh.Interrupted"
        /// The runtime could not do its own part (pipes for the output, a deadline from the API).
        case runtimeFailed = "BoxerMesh.RuntimeFailed"
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(kind.rawValue): \(message)" }

    /// The body the Runtime API takes: `{"errorMessage": …, "errorType": …}`.
    public var body: Boxermesh_V1_LambdaError {
        .with {
            $0.errorMessage = message
            $0.errorType = kind.rawValue
        }
    }
}
