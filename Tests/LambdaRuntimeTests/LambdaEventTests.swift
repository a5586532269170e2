import Testing
import WireFormat

@testable import LambdaRuntime

/// Events as users write them become node configurations; bad ones are refused in words that say what to fix.
@Suite struct LambdaEventTests {
    let settings = try! RuntimeSettings(environment: ["BOXER_BROKER": "broker.example:7800", "BOXER_MESH_SECRET": "s"])

    @Test func fullEvent() throws {
        let event = try LambdaEvent.parsing(Array("""
            {"broker": "10.0.0.1:7700", "mesh": "Lab", "namePrefix": "Worker", "waitFor": 3,
             "command": ["redis-server", "--port", "6379"], "graceSeconds": 4.5, "relay_port": 7802, "relaySplice": true}
            """.utf8))
        let (configuration, grace) = try event.nodeConfiguration(settings)
        #expect(configuration.broker.description == "10.0.0.1:7700")
        #expect(configuration.join.mesh == "lab")
        #expect(configuration.join.nodeName == "worker")
        #expect(configuration.join.nameIsPrefix)
        #expect(configuration.waitFor == 3)
        #expect(configuration.command == ["redis-server", "--port", "6379"])
        #expect(configuration.relayPort == 7802)
        #expect(configuration.relaySplice)
        #expect(grace == .milliseconds(4500))
    }

    @Test func defaultsFromTheEnvironment() throws {
        let (configuration, grace) = try LambdaEvent.parsing(Array(#"{"name": "db", "command": ["true"]}"#.utf8)).nodeConfiguration(settings)
        #expect(configuration.broker.description == "broker.example:7800")
        #expect(configuration.join.mesh == "default")
        #expect(configuration.join.nameIsPrefix == false)
        #expect(configuration.waitFor == nil)
        #expect(configuration.relayPort == 7702)
        #expect(!configuration.relaySplice)
        #expect(grace == .seconds(10))
    }

    @Test(arguments: [
        ("{not json", "not valid JSON of an event's shape"),
        ("[1, 2]", "not valid JSON of an event's shape"),
        (#"{"name": "a", "command": ["x"], "secret": "s"}"#, "unknown field 'secret'"),
        (#"{"name": "a", "command": "x"}"#, "not valid JSON of an event's shape"),
        (#"{"name": "a", "command": ["x"], "waitFor": "two"}"#, "not valid JSON of an event's shape"),
        (#"{"name": "a", "command": ["x"], "waitFor": -1}"#, "not valid JSON of an event's shape"),
    ])
    func malformedJSON(text: String, expected: String) {
        #expect { try LambdaEvent.parsing(Array(text.utf8)) } throws: { error in
            (error as? LambdaFailure)?.kind == .invalidEvent && "\(error)".contains(expected)
        }
    }

    @Test(arguments: [
        (#"{"name": "a"}"#, "no command"),
        (#"{"command": ["x"]}"#, "exactly one of name and namePrefix"),
        (#"{"name": "a", "namePrefix": "b", "command": ["x"]}"#, "exactly one of name and namePrefix"),
        (#"{"name": "-a", "command": ["x"]}"#, "must not start or end with '-'"),
        (#"{"namePrefix": "\#(String(repeating: "p", count: 57))", "command": ["x"]}"#, "longer than 56"),
        (#"{"name": "a", "mesh": "a b", "command": ["x"]}"#, "mesh name 'a b'"),
        (#"{"name": "a", "broker": "host:99999", "command": ["x"]}"#, "port must be a number"),
        (#"{"name": "a", "graceSeconds": 901, "command": ["x"]}"#, "graceSeconds 901.0"),
        (#"{"name": "a", "relayPort": 70000, "command": ["x"]}"#, "relayPort 70000"),
    ])
    func unusableValues(text: String, expected: String) throws {
        let event = try LambdaEvent.parsing(Array(text.utf8))
        #expect { try event.nodeConfiguration(settings) } throws: { error in
            (error as? LambdaFailure)?.kind == .invalidEvent && "\(error)".contains(expected)
        }
    }

    @Test func noBrokerAnywhere() throws {
        let bare = try RuntimeSettings(environment: [:])
        let event = try LambdaEvent.parsing(Array(#"{"name": "a", "command": ["x"]}"#.utf8))
        #expect { try event.nodeConfiguration(bare) } throws: { "\($0)".contains("no BOXER_BROKER") }
    }

    @Test(arguments: [
        (["BOXER_LAMBDA_GRACE_SECONDS": "soon"], "BOXER_LAMBDA_GRACE_SECONDS 'soon'"),
        (["BOXER_LAMBDA_GRACE_SECONDS": "0"], "BOXER_LAMBDA_GRACE_SECONDS '0'"),
        (["BOXER_MESH_SECRET": "  "], "BOXER_MESH_SECRET is empty"),
        (["BOXER_BROKER": "host:0"], "port must be a number"),
        (["BOXER_MESH": "-x"], "BOXER_MESH"),
    ])
    func badSettings(environment: [String: String], expected: String) {
        #expect { try RuntimeSettings(environment: environment) } throws: { error in
            (error as? LambdaFailure)?.kind == .invalidConfiguration && "\(error)".contains(expected)
        }
    }

    /// The error body is the standard Lambda error format.
    @Test func errorBody() throws {
        let json = try LambdaFailure(.appCrashed, "ended by signal 11").body.jsonString()
        #expect(json == #"{"errorMessage":"ended by signal 11","errorType":"BoxerMesh.AppCrashed"}"#)
    }
}
