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

    /// What scripts/one-file.sh appends: the shim, its digest (any 32 bytes will do here), magic and length.
    func trailer(_ shim: [UInt8], digest: [UInt8], magic: String = "BXSHIM02", length: Int? = nil) -> [UInt8] {
        shim + digest + Array(magic.utf8) + withUnsafeBytes(of: UInt64(length ?? shim.count).littleEndian, Array.init)
    }

    @Test("an appended shim is written out once per content, byte for byte")
    func extracts() throws {
        let shim = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let digest = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let executable = try write(Array(repeating: 0x7f, count: 1234) + trailer(shim, digest: digest))
        defer { try? FileManager.default.removeItem(atPath: executable) }
        let mask = umask(0o077)  // a strict umask must not keep other users' apps from loading it
        defer { umask(mask) }
        let path = try #require(Node.extractEmbeddedShim(from: executable))
        defer { unlink(path) }
        #expect(path.hasSuffix("/boxer-mesh-shim-\(digest[0..<16].map { String(format: "%02x", $0) }.joined()).so"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(shim))
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o755)
        // The same content: the same file, not written again.
        let written = try #require(inode(path))
        #expect(Node.extractEmbeddedShim(from: executable) == path)
        #expect(inode(path) == written)

        // A file cut short, or one others may write, is written anew.
        for damage in [{ truncate(path, 100) }, { chmod(path, 0o777) }] {
            let before = try #require(inode(path))
            #expect(damage() == 0)
            #expect(Node.extractEmbeddedShim(from: executable) == path)
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(shim))
            #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o755 && info.st_ino != before)
        }
    }

    func inode(_ path: String) -> ino_t? {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_ino : nil
    }

    @Test("a plain executable, an old or damaged trailer or a length past the start carry no shim")
    func noShim() throws {
        let shim = Array(repeating: UInt8(1), count: 100)
        let digest = Array(repeating: UInt8(2), count: 32)
        for bytes in [
            shim,
            trailer(shim, digest: digest, magic: "BXSHIM01"),
            trailer(shim, digest: digest, magic: "BXSHIM03"),
            trailer(shim, digest: digest, length: 5000),
            Array(shim + Array("BXSHIM01".utf8) + withUnsafeBytes(of: UInt64(10).littleEndian, Array.init)),
        ] {
            let executable = try write(bytes)
            defer { try? FileManager.default.removeItem(atPath: executable) }
            #expect(Node.extractEmbeddedShim(from: executable) == nil)
        }
    }
}
