import FoundationEssentials
import Glibc
import LambdaRuntime
import Logging
import MeshNode

// The Lambda package's `bootstrap`: the node as a custom runtime and nothing else. No broker, lab or command
// line (and not the libraries they need) in the binary every function downloads and maps. `boxer-mesh lambda` is
// the same runtime in the full binary. Log level: BOXER_MESH_LOG_LEVEL (trace … critical), default notice.
let environment = ProcessInfo.processInfo.environment
LoggingSystem.bootstrap(StreamLogHandler.standardError)
var configured = Logger(label: "boxer-mesh.lambda")
if let text = environment["BOXER_MESH_LOG_LEVEL"] {
    if let level = Logger.Level(rawValue: text) {
        configured.logLevel = level
    } else {
        configured.warning("BOXER_MESH_LOG_LEVEL=\(text) is not a log level (trace, debug, info, notice, warning, error, critical); using notice")
    }
} else {
    configured.logLevel = .notice
}
let logger = configured
MainThread.run { await LambdaRuntime.run(environment: environment, logger: logger) }
