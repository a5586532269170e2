import MeshNode
import WireFormat

/// What the function's environment configures, read once when the runtime starts; an unusable value is an init
/// error. Events may override the broker, mesh and grace; never the secret.
public struct RuntimeSettings: Sendable {
    /// `BOXER_MESH_SECRET`; unset: the insecure mesh of a broker started with `--insecure`.
    public var secret: MeshSecret
    /// `BOXER_BROKER`, for events that name no broker.
    public var broker: BrokerAddress?
    /// `BOXER_MESH`, else "default", for events that name no mesh.
    public var mesh: String
    /// `BOXER_LAMBDA_GRACE_SECONDS`, else 10 s, for events that give no grace.
    public var grace: Duration
    /// How long the node keeps trying to reach the broker.
    public var connectTimeout = Duration.seconds(10)

    public static let graceVariable = "BOXER_LAMBDA_GRACE_SECONDS"
    public static let defaultGrace = Duration.seconds(10)
    /// A grace must leave the app some time and fit in Lambda's longest timeout (15 minutes).
    static let graceRange = 0.1...900.0

    public init(environment: [String: String]) throws(LambdaFailure) {
        do {
            secret = try MeshSecret.load(file: nil, environment: environment) ?? .insecure
            broker = try environment[BrokerAddress.environmentVariable].map { text throws(BrokerAddressError) in
                try BrokerAddress(parsing: text)
            }
            mesh = try MeshName.validated(environment["BOXER_MESH"] ?? "default", role: "mesh name (BOXER_MESH)")
        } catch {
            throw LambdaFailure(.invalidConfiguration, "\(error)")
        }
        if let text = environment[Self.graceVariable] {
            guard let seconds = Double(text), Self.graceRange.contains(seconds) else {
                throw LambdaFailure(
                    .invalidConfiguration, "\(Self.graceVariable) '\(text)' must be a number of seconds, \(Self.graceRange)")
            }
            grace = .milliseconds(Int64(seconds * 1000))
        } else {
            grace = Self.defaultGrace
        }
    }
}
