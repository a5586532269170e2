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
    /// else nil. Plain system calls (Files.swift), not FoundationEssentials' URLs: this runs as every node starts.
    public static var bundledShim: String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX))
        let count = buffer.withUnsafeMutableBytes { readlink("/proc/self/exe", $0.baseAddress!, $0.count) }
        guard count > 0 else { return nil }
        let executable = String(decoding: buffer[..<count], as: UTF8.self)
        let folder = String(executable[..<(executable.lastIndex(of: "/") ?? executable.startIndex)])
        for beside in [folder, "\(folder)/\(shimBuildFolder)"] {
            let path = "\(beside)/\(shimFileName)"
            if access(path, R_OK) == 0 { return path }
        }
        return extractEmbeddedShim(from: executable)
    }

    /// Writes the shim appended to `executable` to the temporary directory; nil when none is appended or it cannot
    /// be written.
    static func extractEmbeddedShim(from executable: String) -> String? {
        guard let file = ReadOnlyFile(executable) else { return nil }
        let size = file.size
        guard size > 16, let trailer = file.bytes(16, at: size - 16), Array(trailer[0..<8]) == trailerMagic else { return nil }
        let length = trailer[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length > 0, length < size - 16, let shim = file.bytes(Int(length), at: size - 16 - Int(length)) else {
            return nil
        }
        // Named by content, so nodes of one build share the file and a new build never runs an old shim.
        let digest = shim.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        let path = "\(temporaryDirectory)/boxer-mesh-shim-\(String(digest, radix: 16)).so"
        if ReadOnlyFile(path)?.contents == shim {
            return path
        }
        let temporary = "\(path).\(getpid())"
        guard createFile(temporary, holding: shim, mode: 0o755), rename(temporary, path) == 0 else {
            unlink(temporary)
            return nil
        }
        return path
    }
}
