import Foundation
@testable import MeshNode
import Testing

@Suite("The shim carried inside the executable")
struct EmbeddedShimTests {
    func write(_ bytes: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("exe-\(UUID())").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test("an appended shim is written out once per content, byte for byte")
    func extracts() throws {
        let shim = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let length = withUnsafeBytes(of: UInt64(shim.count).littleEndian, Array.init)
        let executable = try write(Array(repeating: 0x7f, count: 1234) + shim + Array("BXSHIM01".utf8) + length)
        defer { try? FileManager.default.removeItem(atPath: executable) }
        let mask = umask(0o077)  // a strict umask must not keep other users' apps from loading it
        defer { umask(mask) }
        let path = try #require(Node.extractEmbeddedShim(from: executable))
        defer { unlink(path) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(shim))
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o755)
        #expect(Node.extractEmbeddedShim(from: executable) == path)  // the same content: the same file
    }

    @Test("a plain executable, a damaged trailer or a length past the start carry no shim")
    func noShim() throws {
        for bytes in [
            Array(repeating: UInt8(1), count: 100),
            Array(repeating: UInt8(1), count: 100) + Array("BXSHIM02".utf8) + withUnsafeBytes(of: UInt64(10).littleEndian, Array.init),
            Array(repeating: UInt8(1), count: 100) + Array("BXSHIM01".utf8) + withUnsafeBytes(of: UInt64(5000).littleEndian, Array.init),
        ] {
            let executable = try write(bytes)
            defer { try? FileManager.default.removeItem(atPath: executable) }
            #expect(Node.extractEmbeddedShim(from: executable) == nil)
        }
    }
}
