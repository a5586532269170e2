import Logging
import MeshNode

/// The node as a Lambda custom runtime: asks the Runtime API for an invocation, runs the node and its command for
/// it (``invoke(_:)``), posts the response or the error, and asks for the next, one invocation at a time, until the
/// API fails. A bad event fails only its own invocation.
public struct LambdaRuntime: Sendable {
    let api: RuntimeAPI
    let settings: RuntimeSettings
    let logger: Logger

    /// The Runtime API's calls block (`next` until an event comes); they run here, off Swift's cooperative pool, one
    /// at a time as the API wants them.
    static let blocking = BlockingPool(name: "runtime-api", limit: 1)

    /// Runs the runtime with the function's `environment`; returns the exit status for the process. Without a usable
    /// `AWS_LAMBDA_RUNTIME_API` there is nowhere to report to: it logs why and returns 1. A bad setting is posted to
    /// `/runtime/init/error`, after which the runtime exits (as the API asks).
    public static func run(environment: [String: String], logger: Logger) async -> Int32 {
        guard let endpoint = environment[RuntimeAPI.environmentVariable] else {
            logger.critical(
                "\(RuntimeAPI.environmentVariable) is not set: this runs as a Lambda custom runtime's bootstrap, started by the platform")
            return 1
        }
        let api: RuntimeAPI
        do {
            api = try RuntimeAPI(parsing: endpoint)
        } catch {
            logger.critical("\(error)")
            return 1
        }
        let settings: RuntimeSettings
        do {
            settings = try RuntimeSettings(environment: environment)
        } catch {
            logger.critical("cannot start: \(error)")
            do {
                try await Self.blocking.run { _ in try api.initFailed(error.body) }
            } catch {
                logger.error("the init error could not be reported: \(error)")
            }
            return 1
        }
        return await LambdaRuntime(api: api, settings: settings, logger: logger).serve()
    }

    /// Takes invocations until the Runtime API fails; returns 1 then.
    func serve() async -> Int32 {
        logger.notice("Lambda runtime ready", metadata: ["api": "\(api.host):\(api.port)"])
        while true {
            let invocation: Invocation
            do {
                invocation = try await Self.blocking.run { [api] _ in try api.next() }
            } catch {
                logger.critical("cannot get the next invocation: \(error)")
                return 1
            }
            let outcome = await invoke(invocation)
            do {
                switch outcome {
                case .success(let response):
                    let body = try response.jsonUTF8Bytes() as [UInt8]
                    try await Self.blocking.run { [api] _ in try api.respond(to: invocation.requestID, with: body) }
                case .failure(let failure):
                    logger.error("invocation failed: \(failure)", metadata: ["request": "\(invocation.requestID)"])
                    try await Self.blocking.run { [api] _ in try api.fail(invocation.requestID, with: failure.body) }
                }
            } catch let error as RuntimeAPIError where !error.isFatal {
                logger.error("\(error)", metadata: ["request": "\(invocation.requestID)"])
            } catch {
                logger.critical("cannot post the result: \(error)", metadata: ["request": "\(invocation.requestID)"])
                return 1
            }
        }
    }
}
