import FoundationEssentials
import Glibc

/// Where the node finds the preload shim it gives the app. Two shapes ship:
/// - a build tree: `libboxer-shim.so` in `boxer-mesh_PreloadShim.resources/` beside the boxer-mesh executable
///   (every `swift build` / `swift run` builds it there: the PreloadShimBuilder plugin);
/// - a Lambda package (scripts/package.sh --lambda): `libboxer-shim.so` beside the executable (`bootstrap`);
/// - one file for a function package (scripts/package.sh): the shim appended to the executable, followed by a
///   16-byte trailer ("BXSHIM01" + its length, little-endian). The ELF loader ignores the tail; the node writes
///   it out to the temporary directory (on Lambda, only /tmp is writable) once per content.
extension Node {
    public static let shimFileName = "libboxer-shim.so"
    static let trailerMagic = Array("BXSHIM01".utf8)

    /// SwiftPM's folder for the PreloadShim target's resources, beside the executable.
    public static let shimBuildFolder = "boxer-mesh_PreloadShim.resources"

    /// The shim beside the executable or in its build folder there, else the one carried inside it (written out),
    /// else nil.
    public static var bundledShim: String? {
        guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        let folder = URL(fileURLWithPath: executable).deletingLastPathComponent()
        for beside in [folder, folder.appendingPathComponent(shimBuildFolder)] {
            let path = beside.appendingPathComponent(shimFileName).path
            if FileManager.default.isReadableFile(atPath: path) { return path }
        }
        return try? extractEmbeddedShim(from: executable)
    }

    /// Writes the shim appended to `executable` to the temporary directory; nil when none is appended.
    static func extractEmbeddedShim(from executable: String) throws -> String? {
        let fd = open(executable, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        /// `count` bytes at `offset`, or nil when the file has fewer.
        func bytes(_ count: Int, at offset: Int) -> [UInt8]? {
            var buffer = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
                if got < 0, errno == EINTR { continue }
                guard got > 0 else { return nil }
                done += got
            }
            return buffer
        }
        let size = Int(lseek(fd, 0, SEEK_END))
        guard size > 16, let trailer = bytes(16, at: size - 16), Array(trailer[0..<8]) == trailerMagic else { return nil }
        let length = trailer[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length > 0, length < size - 16, let shim = bytes(Int(length), at: size - 16 - Int(length)) else {
            return nil
        }
        // Named by content, so nodes of one build share the file and a new build never runs an old shim.
        let digest = shim.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        let directory = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let path = "\(directory)/boxer-mesh-shim-\(String(digest, radix: 16)).so"
        if FileManager.default.isReadableFile(atPath: path), (try? Data(contentsOf: URL(fileURLWithPath: path))) == Data(shim) {
            return path
        }
        let temporary = "\(path).\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(shim), attributes: [.posixPermissions: 0o755]) else {
            return nil
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            return nil
        }
        return path
    }
}
