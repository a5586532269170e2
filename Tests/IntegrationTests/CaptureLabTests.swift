import Foundation
import MeshLab
import Testing

/// Payload capture end to end in the NAT lab: hard NATs on both sides make curl's connection to an unmodified
/// `python3 -m http.server` go through the broker's relay; a broker started with `--capture-payloads` publishes
/// its bytes, `boxer-mesh tap --pcap` writes them as a pcap file, and tshark (an independent reader) must find
/// the HTTP response in it and rebuild the served file byte for byte. Without the opt-in nothing is published.
@Suite(
    "Payload capture in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct CaptureLabTests {
    /// Runs tshark on the broker host (the pcap file is on the shared file system).
    func tshark(_ mesh: MeshLabFixture, _ arguments: [String]) throws -> CommandResult {
        try mesh.lab.run(.broker, ["tshark"] + arguments, timeout: .seconds(60))
    }

    func listening(_ mesh: MeshLabFixture) throws -> String {
        try mesh.lab.run(.broker, ["ss", "-ltnH"]).check().standardOutput
    }

    @Test("tshark reads a tap --pcap file of a relayed HTTP transfer and reassembles the HTTP response")
    func relayedHTTP() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "cap", nat: .hard, brokerArguments: ["--capture-payloads"]) { mesh in
            #expect(mesh.broker.standardError.contains("payload capture ON"), "\(mesh.broker.standardError)")
            let ports = try listening(mesh)
            #expect(ports.contains(":7703 "), "the capture port should listen: \(ports)")
            // A capturing broker splices nothing (spliced bytes would bypass the capture), even for nodes that ask.
            #expect(!ports.contains(":7704 ") && mesh.broker.standardError.contains("no splice port"), "\(ports)")
            let site = mesh.work.appendingPathComponent("site")
            try FileManager.default.createDirectory(at: site, withIntermediateDirectories: true)
            let file = site.appendingPathComponent("file.bin").path
            let made = try mesh.lab.run(.broker, ["sh", "-c", "head -c 3000000 /dev/urandom > \(file) && sha256sum \(file)"])
            let expected = try #require(made.standardOutput.split(separator: " ").first.map(String.init))
            // Port 8080: tshark dissects it as HTTP by default (8000 would need `-d tcp.port==8000,http`).
            let server = try mesh.node(1, name: "web", options: ["--relay-splice"], ["/usr/bin/python3", "-u", "-m", "http.server", "8080", "--directory", site.path])
            defer { server.kill(SIGTERM) }
            #expect(
                server.waitForOutput(containing: "Serving HTTP", timeout: .seconds(15)),
                "\(server.standardOutput)\n\(server.standardError)")

            let pcap = mesh.work.appendingPathComponent("relayed.pcap").path
            let tap = try mesh.lab.spawn(
                .broker, [MeshLabFixture.binary, "tap", "--pcap", pcap, "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "capturing the relayed traffic"), "\(tap.standardError)")

            let client = try mesh.node(
                2, name: "fetch", options: ["--log-level", "info", "--relay-splice"],
                [
                    "sh", "-c",
                    MeshLabFixture.inTemporaryFile(
                        "curl -sS --fail -o \"$out\" -w '%{remote_ip} %{remote_port} %{local_ip} %{local_port}\\n' "
                            + "http://web:8080/file.bin && sha256sum \"$out\""),
                ])
            #expect(client.waitUntilExit(timeout: .seconds(120)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardError.contains("no direct link in time; relaying"), "not relayed: \(client.standardError)")
            #expect(client.standardError.contains("the broker has no splice port"), "\(client.standardError)")
            let lines = client.standardOutput.split(separator: "\n")
            #expect(lines.last?.hasPrefix(expected) == true, "got \(client.standardOutput), want \(expected)")
            // What curl saw: the server's mesh address and port, its own mesh address and port.
            let seen = lines.first.map { $0.split(separator: " ").map(String.init) } ?? []
            try #require(seen.count == 4, "\(client.standardOutput)")

            // The tap writes as the relay publishes; wait until tshark finds the whole response in the file.
            let found = await eventually(timeout: .seconds(30)) {
                (try? tshark(mesh, ["-r", pcap, "-Y", "http.response", "-T", "fields", "-e", "http.response.code"]))?
                    .standardOutput.contains("200") == true
            }
            tap.kill(SIGINT)
            #expect(tap.waitUntilExit(timeout: .seconds(10)) != nil)
            #expect(found, "tap: \(tap.standardError)")
            #expect(!tap.standardError.contains("bytes missed"), "\(tap.standardError)")

            let response = try tshark(
                mesh, ["-r", pcap, "-Y", "http.response", "-T", "fields", "-e", "http.response.code", "-e", "ip.src", "-e", "tcp.srcport",
                       "-e", "ip.dst", "-e", "tcp.dstport"])
            #expect(response.status == 0, "\(response)")
            print("capture lab: curl saw \(seen); tshark's HTTP response: \(response.standardOutput)", terminator: "")
            print("capture lab: tap: \(tap.standardError)", terminator: "")
            // One response, between the same mesh addresses and ports curl reported.
            #expect(response.standardOutput == "200\t" + seen.joined(separator: "\t") + "\n", "\(response.standardOutput) vs \(seen)")

            let exported = mesh.work.appendingPathComponent("exported")
            let export = try tshark(mesh, ["-r", pcap, "-Q", "--export-objects", "http,\(exported.path)"])
            #expect(export.status == 0, "\(export)")
            let objects = try FileManager.default.contentsOfDirectory(atPath: exported.path)
            #expect(objects == ["file.bin"], "\(objects)")
            let hash = try mesh.lab.run(.broker, ["sha256sum", exported.appendingPathComponent("file.bin").path]).check()
            #expect(hash.standardOutput.hasPrefix(expected), "exported \(hash.standardOutput), served \(expected)")

            // Every packet's IPv4 and TCP checksums verify, and tshark sees no lost or out-of-order segment.
            let checks = try tshark(
                mesh, ["-r", pcap, "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-T", "fields",
                       "-e", "ip.checksum.status", "-e", "tcp.checksum.status"])
            let statuses = Set(checks.standardOutput.split(separator: "\n"))
            #expect(statuses == ["1\t1"], "checksum statuses (1 = good): \(statuses)")
            print("capture lab: \(checks.standardOutput.split(separator: "\n").count) packets, checksum statuses \(statuses)")
            let problems = try tshark(
                mesh, ["-r", pcap, "-Y", "tcp.analysis.lost_segment || tcp.analysis.out_of_order || tcp.analysis.retransmission"])
            #expect(problems.standardOutput.isEmpty, "\(problems.standardOutput)")
            let handshakes = try tshark(mesh, ["-r", pcap, "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0"])
            #expect(handshakes.standardOutput.split(separator: "\n").count == 1, "\(handshakes.standardOutput)")
        }
    }

    @Test("without --capture-payloads the broker opens no capture port, and tap --pcap fails naming the opt-in")
    func offByDefault() async throws {
        try await MeshLabFixture.with(prefix: "cap", nat: .hard) { mesh in
            #expect(!mesh.broker.standardError.contains("payload capture"), "\(mesh.broker.standardError)")
            let ports = try listening(mesh)
            #expect(ports.contains(":7702 "), "the relay should listen: \(ports)")
            #expect(!ports.contains(":7703 "), "\(ports)")
            let pcap = mesh.work.appendingPathComponent("never.pcap").path
            let tap = try mesh.lab.run(
                .broker, [MeshLabFixture.binary, "tap", "--pcap", pcap, "--broker", "127.0.0.1", "--secret-file", mesh.secretFile],
                timeout: .seconds(20))
            #expect(tap.status != 0 && !tap.timedOut, "\(tap)")
            #expect(tap.standardError.contains("does not capture payloads"), "\(tap.standardError)")
            #expect(tap.standardError.contains("boxer-mesh broker --capture-payloads"), "\(tap.standardError)")
            #expect(!FileManager.default.fileExists(atPath: pcap))
        }
    }
}
