import ChildProcess
import Foundation
import LambdaRuntime
import Testing

/// The built binary as a Lambda custom runtime's `bootstrap`, against the strict Runtime API of
/// Tests/tools/runtime_api.py and a real broker on loopback; apps from Tests/tools/lambda_app.py. Every test also
/// requires that the runtime broke no rule of the API. No root needed.
@Suite(.serialized, .timeLimit(.minutes(3))) struct LambdaBootstrapTests {
    static let app = LinkLabTests.tool("lambda_app.py")

    /// An event starts a node and its app: the response carries the app's exit status, its output's last lines (also
    /// passed through to the function's log) and the node's links; a name prefix is completed by the broker, and a
    /// second invocation in the same runtime works the same way.
    @Test func eventRunsNodeAndApp() async throws {
        try MeshLabFixture.requireShim()
        try await LambdaFixture.with { fixture in
            let server = try fixture.node("echo", ["/usr/bin/python3", Self.app, "serve", "7000"])
            defer { server.send(SIGTERM); _ = server.wait() }
            let ask = fixture.event([
                "namePrefix": "worker", "waitFor": 2,
                "command": ["/usr/bin/python3", Self.app, "ask", "echo", "7000", "ping"],
            ])
            let exit = fixture.event(["name": "second", "command": ["/bin/sh", "-c", "echo out-line; echo err-line >&2; exit 3"]])
            let run = try await fixture.runtime([(ask, 60), (exit, 60)])
            let results = await run.results(2, timeout: .seconds(60))
            try #require(results.count == 2, "\(run.records) \(fixture.contents(of: run.runtimeErrors))")

            let first = try #require(
                results[0].response,
                "an error instead of a response: \(results[0].errorMessage)\n\(fixture.contents(of: fixture.brokerLog))\n\(fixture.contents(of: run.runtimeErrors))")
            #expect(first["name"] as? String == "worker-1")
            #expect((first["address"] as? String)?.hasPrefix("100.64.0.") == true)
            #expect(first["exitStatus"] as? Int == 0)
            #expect(results[0].output.contains("echo: ping"))
            let links = first["links"] as? [String: Any] ?? [:]
            #expect((links["direct"] as? Int ?? 0) + (links["relayed"] as? Int ?? 0) == 1, "links: \(links)")
            #expect(first["leaveReason"] as? String == "app exited with status 0")

            let second = try #require(results[1].response)
            #expect(second["exitStatus"] as? Int == 3)
            #expect(results[1].output == ["out-line", "err-line"] || results[1].output == ["err-line", "out-line"])
            #expect(second["deadline"] == nil)
            // Passed through to the function's log: standard output to standard output, errors to errors.
            #expect(fixture.contents(of: run.runtimeOutput).contains("out-line"))
            #expect(fixture.contents(of: run.runtimeErrors).contains("err-line"))
            #expect(fixture.contents(of: fixture.brokerLog).contains("node=worker-1 reason=app exited with status 0"))
            #expect(run.violations.isEmpty, "\(run.violations)")
        }
    }

    /// An app killed by a signal, a command that does not exist, a start barrier the deadline overtakes and a node
    /// that cannot join (wrong secret) each post an error for their invocation; the runtime goes on.
    @Test func failuresPostErrors() async throws {
        try await LambdaFixture.with { fixture in
            let crash = fixture.event(["name": "crash", "command": ["/bin/sh", "-c", "echo before the crash; kill -SEGV $$"]])
            let missing = fixture.event(["name": "missing", "command": ["/no/such/program"]])
            let waiting = fixture.event(["name": "waiting", "waitFor": 5, "graceSeconds": 2, "command": ["/bin/true"]])
            let run = try await fixture.runtime([(crash, 60), (missing, 60), (waiting, 4)])
            let results = await run.results(3, timeout: .seconds(60))
            try #require(results.count == 3, "\(run.records)")
            #expect(results[2].errorType == "BoxerMesh.DeadlineBeforeStart")
            #expect(results[2].errorMessage.contains("still joining or waiting for members"))
            #expect(results[2].msBeforeDeadline > 0)
            #expect(fixture.contents(of: fixture.brokerLog).contains("node=waiting reason=the app never started (waiting for 5 members)"))
            #expect(results[0].errorType == "BoxerMesh.AppCrashed")
            #expect(results[0].errorMessage.contains("signal 11"))
            #expect(results[0].errorMessage.contains("before the crash"))
            #expect(results[1].errorType == "BoxerMesh.LaunchFailed")
            #expect(results[1].errorMessage.contains("cannot run '/no/such/program'"))
            #expect(run.violations.isEmpty, "\(run.violations)")

            let wrongSecret = try await fixture.runtime(
                [(fixture.event(["name": "stranger", "command": ["/bin/true"]]), 60)], environment: ["BOXER_MESH_SECRET": "wrong"])
            let refused = await wrongSecret.results(1, timeout: .seconds(30))
            try #require(refused.count == 1)
            #expect(refused[0].errorType == "BoxerMesh.JoinFailed")
            #expect(refused[0].errorMessage.contains("wrong mesh secret"))
            #expect(wrongSecret.violations.isEmpty, "\(wrongSecret.violations)")
        }
    }

    /// A deadline 20 s away: the app gets SIGTERM 10 s before it (the default grace), the node leaves the mesh
    /// saying why, and the response arrives before the deadline. An app that ignores SIGTERM is killed in time.
    @Test func deadlineStopsTheApp() async throws {
        try await LambdaFixture.with { fixture in
            let polite = fixture.event(["name": "polite", "command": ["/usr/bin/python3", Self.app, "stop-on-term"]])
            let stubborn = fixture.event([
                "name": "stubborn", "graceSeconds": 3, "command": ["/usr/bin/python3", Self.app, "ignore-term"],
            ])
            let run = try await fixture.runtime([(polite, 20), (stubborn, 8)])
            let results = await run.results(2, timeout: .seconds(40))
            try #require(results.count == 2, "\(run.records)")
            let deadlines = run.records.compactMap { $0["deadline_ms"] as? Int }
            try #require(deadlines.count == 2)

            let first = try #require(results[0].response, "an error instead of a response: \(results[0].errorMessage)")
            #expect(first["deadline"] as? Bool == true)
            #expect(first["exitStatus"] as? Int == 0)  // it ended itself on SIGTERM
            let stopped = try #require(results[0].output.first { $0.hasPrefix("SIGTERM at ") }.flatMap { Int($0.dropFirst(11)) })
            let graceSeen = deadlines[0] - stopped
            #expect((9_500...10_500).contains(graceSeen), "SIGTERM came \(graceSeen) ms before the deadline")
            #expect(results[0].msBeforeDeadline > 0)
            print("lambda: SIGTERM \(graceSeen) ms before the deadline, response \(results[0].msBeforeDeadline) ms before it; stubborn app's response \(results[1].msBeforeDeadline) ms before its deadline")
            #expect(fixture.contents(of: fixture.brokerLog).contains(
                "node=polite reason=deadline: the app was stopped 10.0 s before the function's deadline"))

            let second = try #require(results[1].response)
            #expect(second["exitStatus"] as? Int == 128 + Int(SIGKILL))
            #expect(second["deadline"] as? Bool == true)
            #expect(results[1].msBeforeDeadline > 0)
            #expect(fixture.contents(of: fixture.brokerLog).contains("node=stubborn reason=deadline"))
            #expect(run.violations.isEmpty, "\(run.violations)")
        }
    }

    /// Malformed events get clear errors for their own invocation, and the runtime takes the next event.
    @Test func malformedEventsGetErrors() async throws {
        try await LambdaFixture.with { fixture in
            let bad: [(event: String, expected: String)] = [
                ("{not json", "not valid JSON of an event's shape"),
                (fixture.event(["name": "a", "command": ["/bin/true"], "secret": "x"]), "unknown field 'secret'"),
                (fixture.event(["name": "a", "command": "/bin/true"]), "not valid JSON of an event's shape"),
                (fixture.event(["name": "a"]), "no command"),
                (fixture.event(["name": "a", "namePrefix": "b", "command": ["/bin/true"]]), "exactly one of name and namePrefix"),
                (fixture.event(["name": "not a name", "command": ["/bin/true"]]), "node name 'not a name'"),
                (fixture.event(["name": "a", "broker": "", "command": ["/bin/true"]]), "names no broker"),
                (fixture.event(["name": "a", "graceSeconds": 30, "command": ["/bin/true"]]), "raise the function's timeout"),
            ]
            let good = fixture.event(["name": "after", "command": ["/bin/sh", "-c", "echo still here"]])
            let run = try await fixture.runtime(bad.map { ($0.event, 20) } + [(good, 20)])
            let results = await run.results(bad.count + 1, timeout: .seconds(60))
            try #require(results.count == bad.count + 1, "\(run.records)")
            for (result, expectation) in zip(results, bad) {
                #expect(result.errorType == "BoxerMesh.InvalidEvent" || result.errorType == "BoxerMesh.DeadlineTooNear")
                #expect(result.errorMessage.contains(expectation.expected), "\(result.errorMessage)")
            }
            #expect(results.last?.output == ["still here"])
            #expect(run.violations.isEmpty, "\(run.violations)")
        }
    }

    /// A bad setting in the function's environment goes to /runtime/init/error and the runtime exits; without the
    /// Runtime API's address there is nothing to report to, and the runtime says so and exits.
    @Test func initErrors() async throws {
        try await LambdaFixture.with { fixture in
            let run = try await fixture.runtime([], environment: ["BOXER_LAMBDA_GRACE_SECONDS": "soon"])
            #expect(run.runtime.wait(timeout: .seconds(20)) == 1)
            let initError = try #require(run.records.first { $0["init_error"] != nil })
            #expect(initError["type"] as? String == "BoxerMesh.InvalidConfiguration")
            let body = initError["init_error"] as? [String: Any]
            #expect((body?["errorMessage"] as? String)?.contains("BOXER_LAMBDA_GRACE_SECONDS 'soon'") == true)
            #expect(run.violations.isEmpty, "\(run.violations)")

            let errors = fixture.work.appendingPathComponent("no-api.err").path
            var environment = ProcessInfo.processInfo.environment
            environment["AWS_LAMBDA_RUNTIME_API"] = nil
            let lone = try ChildProcess([LambdaFixture.binary, "lambda"], environment: environment, standardError: .file(errors))
            #expect(lone.wait(timeout: .seconds(20)) == 1)
            #expect(fixture.contents(of: errors).contains("AWS_LAMBDA_RUNTIME_API is not set"))
        }
    }

    /// The test server is as strict as the API: a second `next` during an invocation is refused (403), a result for
    /// another request id too (400), and a response over 6 MiB (413); each is recorded as a violation.
    @Test func strictServerRefusesWhatTheAPIRefuses() async throws {
        try await LambdaFixture.with { fixture in
            let server = try await RuntimeAPIServer(fixture: fixture, invocations: [("{}", 60)])
            let api = try RuntimeAPI(parsing: "127.0.0.1:\(server.port)")
            let invocation = try api.next()
            #expect(throws: RuntimeAPIError.self) { try api.next() }
            #expect(throws: RuntimeAPIError.self) { try api.respond(to: "not-\(invocation.requestID)", with: Array("{}".utf8)) }
            #expect(throws: RuntimeAPIError.self) {
                try api.respond(to: invocation.requestID, with: [UInt8](repeating: 32, count: 6_291_457))
            }
            let violations = server.violations
            #expect(violations.count == 3, "\(violations)")
            #expect(violations.contains { $0.contains("one invocation at a time") })
            #expect(violations.contains { $0.contains("not the current invocation") })
            #expect(violations.contains { $0.contains("maximum allowed payload size") })
        }
    }
}
