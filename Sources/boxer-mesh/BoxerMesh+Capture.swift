import ArgumentParser
import Logging
import MeshNode
import Synchronization
import WireFormat

/// `boxer-mesh tap --pcap FILE`: the capture stream of a broker that opted in, written as a pcap file.
extension BoxerMesh.Tap {
    func validate() throws {
        guard pcap == nil || (node == nil && !json) else {
            throw ValidationError("--pcap writes every relayed connection of the mesh to the file: --node and --json do not apply")
        }
        guard count.map({ $0 > 0 }) ?? true else { throw ValidationError("--count must be at least 1") }
    }

    func capture(to path: String) async throws {
        let logger = logging.makeLogger("boxer-mesh.tap")
        let join = try mesh.joinRequest(nodeName: nil)
        let broker = try mesh.brokerAddress()
        // The handshake proves the secret and tells whether (and where) the broker publishes payloads.
        let capturePort = try await MeshSession.withSession(
            join, broker: broker, connectTimeout: mesh.connectTimeoutDuration, logger: logger
        ) { session in
            UInt16(truncatingIfNeeded: session.welcome.capturePort)
        }
        guard capturePort != 0 else { throw CaptureUnavailable(broker: "\(broker)") }
        let endpoint = broker.endpoint(port: capturePort)
        let writer = try PcapWriter(path: path)
        let remaining = Atomic<Int>(count ?? .max)
        let failure = Mutex<PcapWriteError?>(nil)
        try await TapSubscriber.run(
            endpoint: endpoint, key: TapKey(secret: join.secret, mesh: join.mesh), kinds: [.capture],
            onSubscribed: { logger.notice("capturing the relayed traffic of mesh '\(join.mesh)' from \(endpoint) to \(path)") },
            onEvent: { event in
                do throws(PcapWriteError) {
                    for warning in try writer.write(event) { logger.warning("\(warning)") }
                } catch {
                    failure.withLock { $0 = error }
                    return false
                }
                return remaining.subtract(1, ordering: .relaxed).newValue > 0
            },
            onMalformed: { logger.warning("skipped a malformed capture message: \($0)") })
        if let error = failure.withLock({ $0 }) { throw error }
        logger.notice("wrote \(writer.packets) packets to \(path)")
    }
}

/// The broker was not started with the capture opt-in, so it publishes no payloads to capture.
struct CaptureUnavailable: Error, CustomStringConvertible {
    let broker: String

    var description: String {
        "the broker at \(broker) does not capture payloads: start it with `boxer-mesh broker --capture-payloads` "
            + "to capture relayed traffic (it is off by default)"
    }
}
