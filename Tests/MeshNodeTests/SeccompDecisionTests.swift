import Foundation
import Glibc
import Testing
import WireFormat

@testable import MeshNode

/// The seccomp supervisor's pure decisions: which programs it takes over (real binaries of this machine), which
/// socket addresses are the mesh's, how addresses go back into an app's memory, and the hosts file it serves.
@Suite("Seccomp supervisor: classification and addresses")
struct SeccompDecisionTests {
    @Test("ELF inspection: busybox-static is static, Debian's Go builds are Go (cgo-linked, with an interpreter), python3 is dynamic")
    func classifiesRealBinaries() throws {
        #expect(try ExecutableKind.inspect(path: "/bin/busybox") == .staticBinary)
        #expect(try ExecutableKind.inspect(path: "/usr/sbin/nats-server") == .go)
        #expect(try ExecutableKind.inspect(path: "/usr/bin/prometheus-node-exporter") == .go)
        #expect(try ExecutableKind.inspect(path: "/usr/bin/python3") == .dynamic)
        #expect(try ExecutableKind.inspect(path: "/usr/bin/ldd") == .script)  // a shell script
    }

    @Test("a missing file or a truncated ELF header is an error that names the file, never a crash")
    func badExecutables() throws {
        #expect(throws: ExecutableInspectionError.self) { try ExecutableKind.inspect(path: "/nonexistent/app") }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("truncated-\(UUID()).elf").path
        defer { unlink(path) }
        // A 64-bit ELF header whose program headers lie beyond the end of the file.
        var header = [UInt8](repeating: 0, count: 64)
        header[0..<6] = [0x7f, 0x45, 0x4c, 0x46, 2, 1]
        header[0x20] = 0xff; header[0x36] = 56; header[0x38] = 4
        #expect(FileManager.default.createFile(atPath: path, contents: Data(header)))
        let error = #expect(throws: ExecutableInspectionError.self) { try ExecutableKind.inspect(path: path) }
        #expect(error?.description.contains(path) == true)
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("elf32-\(UUID())").path
        defer { unlink(other) }
        header[4] = 1  // 32-bit
        #expect(FileManager.default.createFile(atPath: other, contents: Data(header)))
        #expect(throws: ExecutableInspectionError.self) { try ExecutableKind.inspect(path: other) }
    }

    @Test("--interpose auto supervises static and Go programs and gives the rest the shim; explicit modes win")
    func choice() {
        #expect(Interposition.choose(.auto, command: "busybox", path: "/usr/bin:/bin").supervised)
        #expect(Interposition.choose(.auto, command: "nats-server", path: "/usr/sbin").supervised)
        #expect(!Interposition.choose(.auto, command: "python3", path: "/usr/bin").supervised)
        #expect(!Interposition.choose(.auto, command: "no-such-program-here", path: "/usr/bin").supervised)
        #expect(!Interposition.choose(.preload, command: "busybox", path: "/bin").supervised)
        #expect(Interposition.choose(.seccomp, command: "python3", path: "/usr/bin").supervised)
        #expect(Interposition.choose(.auto, command: "/bin/busybox", path: nil).reason.contains("statically linked"))
    }

    @Test("sockaddr_in and v4-mapped sockaddr_in6 parse and round-trip; mesh addresses are told from the rest")
    func socketAddresses() throws {
        let subnet = try IPv4Subnet("100.64.0.0/16")
        let v4 = AppSocketAddress(family: AF_INET, ipv4: IPv4Address(100, 64, 0, 7), port: 4222)
        #expect(v4.bytes.count == 16)
        #expect(AppSocketAddress(bytes: v4.bytes) == v4)
        #expect(v4.isMesh(in: subnet))
        let mapped = AppSocketAddress(family: AF_INET6, ipv4: IPv4Address(100, 64, 0, 7), port: 4222)
        #expect(mapped.bytes.count == 28)
        #expect(AppSocketAddress(bytes: mapped.bytes) == mapped)
        #expect(mapped.isMesh(in: subnet))
        #expect(!AppSocketAddress(family: AF_INET, ipv4: IPv4Address(10, 1, 1, 2), port: 80).isMesh(in: subnet))
        #expect(!AppSocketAddress(family: AF_INET, ipv4: IPv4Address(100, 65, 0, 1), port: 80).isMesh(in: subnet))
        // The kernel's own layout: port in network order at offset 2, address at 4.
        var kernel = sockaddr_in()
        kernel.sin_family = sa_family_t(AF_INET)
        kernel.sin_port = UInt16(4222).bigEndian
        kernel.sin_addr.s_addr = IPv4Address(100, 64, 0, 7).value.bigEndian
        #expect(withUnsafeBytes(of: &kernel) { Array($0) } == v4.bytes)
        // `::` (a dual-stack wildcard) is unspecified and maps no IPv4 address; `::1` is neither.
        let wildcard = try #require(AppSocketAddress(bytes: mapped.unspecified.bytes))
        #expect(wildcard.isUnspecified && wildcard.ipv4 == .any && !wildcard.isMesh(in: subnet))
        var loopback6 = [UInt8](repeating: 0, count: 28)
        loopback6[0] = UInt8(AF_INET6); loopback6[23] = 1
        let parsed = try #require(AppSocketAddress(bytes: loopback6))
        #expect(parsed.ipv4 == nil && !parsed.isUnspecified && !parsed.isMesh(in: subnet))
        // Unix sockets and short addresses are not the supervisor's business.
        #expect(AppSocketAddress(bytes: [UInt8(AF_UNIX), 0, 47, 0]) == nil)
        #expect(AppSocketAddress(bytes: [UInt8(AF_INET), 0, 0, 80]) == nil)
    }
}
