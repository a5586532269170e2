import MeshNode
import SwiftProtobuf
import WireFormat

/// The invocation event: JSON in protobuf's JSON mapping of ``Boxermesh_V1_LambdaEvent`` (proto/boxer_mesh.proto).
typealias LambdaEvent = Boxermesh_V1_LambdaEvent

extension LambdaEvent {
    /// The fields an event may have, for the message that names an unknown one.
    static let fieldNames = "broker, mesh, name, namePrefix, waitFor, command, graceSeconds, relayPort, relaySplice"
    static let shape =
        "strings broker, mesh, name or namePrefix, numbers waitFor, graceSeconds, relayPort, a boolean relaySplice, and command a list of strings"

    /// Parses an event; one that is not a boxer-mesh event is refused in words that say what is wrong.
    static func parsing(_ bytes: [UInt8]) throws(LambdaFailure) -> LambdaEvent {
        do {
            return try LambdaEvent(jsonUTF8Bytes: bytes)
        } catch let error as JSONDecodingError {
            let what =
                if case .unknownField(let name) = error {
                    "it has an unknown field '\(name)' (an event has \(fieldNames))"
                } else {
                    "it is not valid JSON of an event's shape: an object with \(shape) (\(error))"
                }
            throw LambdaFailure(.invalidEvent, "the event is not a boxer-mesh event: \(what)")
        } catch {
            throw LambdaFailure(.invalidEvent, "the event is not a boxer-mesh event: \(error)")
        }
    }

    /// The node's configuration for this event under the function's `settings`, and the grace the app gets.
    func nodeConfiguration(_ settings: RuntimeSettings) throws(LambdaFailure) -> (NodeConfiguration, grace: Duration) {
        guard !command.isEmpty, !command[0].isEmpty else {
            throw LambdaFailure(.invalidEvent, "the event has no command: give the program and its arguments, e.g. \"command\": [\"redis-server\", \"--port\", \"6379\"]")
        }
        let join: JoinRequest
        let broker: BrokerAddress
        do {
            guard let address = try self.broker.isEmpty ? settings.broker : BrokerAddress(parsing: self.broker) else {
                throw LambdaFailure(.invalidEvent, "the event names no broker and the function has no \(BrokerAddress.environmentVariable)")
            }
            broker = address
            let mesh = self.mesh.isEmpty ? settings.mesh : try MeshName.validated(self.mesh, role: "mesh name")
            switch (name.isEmpty, namePrefix.isEmpty) {
            case (false, true):
                join = JoinRequest(mesh: mesh, nodeName: try MeshName.validated(name, role: "node name"), secret: settings.secret)
            case (true, false):
                join = JoinRequest(mesh: mesh, nodeName: try MeshName.validatedPrefix(namePrefix), nameIsPrefix: true, secret: settings.secret)
            default:
                throw LambdaFailure(.invalidEvent, "the event needs exactly one of name and namePrefix")
            }
        } catch let failure as LambdaFailure {
            throw failure
        } catch {
            throw LambdaFailure(.invalidEvent, "\(error)")
        }
        var grace = settings.grace
        if graceSeconds != 0 {
            guard RuntimeSettings.graceRange.contains(graceSeconds) else {
                throw LambdaFailure(.invalidEvent, "graceSeconds \(graceSeconds) must be \(RuntimeSettings.graceRange)")
            }
            grace = .milliseconds(Int64(graceSeconds * 1000))
        }
        var configuration = NodeConfiguration(
            broker: broker, join: join, waitFor: waitFor > 1 ? Int(waitFor) : nil, connectTimeout: settings.connectTimeout,
            command: command)
        if relayPort != 0 {
            guard relayPort <= UInt32(UInt16.max) else { throw LambdaFailure(.invalidEvent, "relayPort \(relayPort) is not a port") }
            configuration.relayPort = UInt16(relayPort)
        }
        configuration.relaySplice = relaySplice
        return (configuration, grace)
    }
}
