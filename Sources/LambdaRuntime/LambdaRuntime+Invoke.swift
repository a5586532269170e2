import Glibc
import Logging
import MeshNode
import WireFormat

extension LambdaRuntime {
    /// One invocation: the event becomes a node configuration, the node joins and runs the command with its output
    /// passed through and its tail kept, under the invocation's deadline. The app's exit (or the deadline's stop)
    /// gives a response; a node that could not join, an app that could not start or was killed by a signal the
    /// runtime did not send, and a malformed event give an error.
    func invoke(_ invocation: Invocation) async -> Result<Boxermesh_V1_LambdaResponse, LambdaFailure> {
        do throws(LambdaFailure) {
            return .success(try await run(invocation))
        } catch {
            return .failure(error)
        }
    }

    private func run(_ invocation: Invocation) async throws(LambdaFailure) -> Boxermesh_V1_LambdaResponse {
        let event = try LambdaEvent.parsing(invocation.event)
        var (configuration, grace) = try event.nodeConfiguration(settings)
        guard let end = invocation.deadline else {
            throw LambdaFailure(.runtimeFailed, "the Runtime API gave this invocation no usable Lambda-Runtime-Deadline-Ms")
        }
        let left = ContinuousClock.now.duration(to: end)
        guard left > grace else {
            throw LambdaFailure(
                .deadlineTooNear,
                "the invocation has \(left.secondsText) s left, no more than the grace of \(grace.secondsText) s the app gets to stop: raise the function's timeout or lower graceSeconds")
        }
        let tail: OutputTail
        do {
            tail = try OutputTail()
        } catch {
            throw LambdaFailure(.runtimeFailed, error.description)
        }
        let deadline = NodeDeadline(end, grace: grace)
        let report = NodeReport()
        configuration.appOutput = tail.output
        configuration.deadline = deadline
        configuration.report = report
        // Lambda's custom-runtime contract: the X-Ray header goes to the function's code in _X_AMZN_TRACE_ID.
        if let trace = invocation.traceID { setenv("_X_AMZN_TRACE_ID", trace, 1) } else { unsetenv("_X_AMZN_TRACE_ID") }
        logger.notice("invocation: running \(configuration.command.joined(separator: " "))", metadata: ["request": "\(invocation.requestID)"])
        let result: Result<Int32, any Error>
        do {
            result = .success(try await Node.run(configuration, logger: logger))
        } catch {
            result = .failure(error)
        }
        let output = await tail.finish()
        let status: Int32
        switch result {
        case .success(let value): status = value
        case .failure(let error as DeadlineReached): throw LambdaFailure(.deadlineBeforeStart, error.description)
        case .failure(let error): throw LambdaFailure(.joinFailed, "the node could not join the mesh: \(error)")
        }
        if let launch = report.launchFailure { throw LambdaFailure(.launchFailed, launch.description) }
        guard let reason = report.leaveReason, let member = report.member else {
            throw LambdaFailure(.interrupted, "the runtime was stopped by signal \(status - 128) before the app started")
        }
        if status > 128, !deadline.stoppedTheApp {
            let signal = status - 128
            let name = strsignal(signal).map { String(cString: $0) } ?? "signal \(signal)"
            throw LambdaFailure(
                .appCrashed, "the app was ended by signal \(signal) (\(name))" + (output.isEmpty ? "" : "; its last output:\n" + output.joined(separator: "\n")))
        }
        return .with {
            $0.name = member.name
            $0.address = member.ipv4.description
            $0.exitStatus = status
            $0.output = output
            $0.links = .with {
                $0.direct = UInt32(report.links.direct)
                $0.relayed = UInt32(report.links.relayed)
                $0.upgraded = UInt32(report.links.upgraded)
            }
            $0.deadline = deadline.stoppedTheApp
            $0.leaveReason = reason
        }
    }
}
