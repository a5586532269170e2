import Glibc
import Testing

@testable import MeshNode

@Suite("Reading small files with plain system calls")
struct ReadOnlyFileTests {
    @Test func exactReadsAndReadsToTheEnd() throws {
        var template = Array("/tmp/boxer-mesh-read-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        let path = String(cString: template)
        defer { unlink(path) }
        let bytes: [UInt8] = Array(0..<10)
        #expect(write(fd, bytes, bytes.count) == bytes.count)
        close(fd)
        let file = try #require(ReadOnlyFile(path))
        #expect(file.contents == bytes)
        #expect(file.bytes(2, at: 8) == [8, 9])
        // An exact read past the end is nil; a read up to a limit stops at the end.
        #expect(file.bytes(4, at: 8) == nil)
        #expect(file.read(upTo: 64) == bytes)
        #expect(file.read(upTo: 4) == [0, 1, 2, 3])
        // The kernel's files say size 0 and still have contents.
        let range = try #require(ReadOnlyFile("/proc/sys/net/ipv4/ip_local_port_range")?.read(upTo: 64))
        #expect(!range.isEmpty && range.last == UInt8(ascii: "\n"))
        #expect(ReadOnlyFile("/nonexistent/boxer-mesh") == nil)
    }
}
