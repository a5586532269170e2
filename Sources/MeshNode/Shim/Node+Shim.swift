import Glibc
import PlainText

/// Where the node finds the preload shim it gives the app. Three shapes ship:
/// - a build tree: `libboxer-shim.so` in `boxer-mesh_PreloadShim.resources/` beside the boxer-mesh executable
///   (every `swift build` / `swift run` builds it there: the PreloadShimBuilder plugin);
/// - a Lambda package (scripts/package.sh --lambda): `libboxer-shim.so` beside the executable (`bootstrap`);
/// - one file for a function package (scripts/package.sh): the shim appended to the executable, followed by a
///   48-byte trailer (the shim's SHA-256, "BXSHIM02", its length as 8 bytes little-endian). The ELF loader ignores
///   the tail; the node writes the shim out to the temporary directory (on Lambda, only /tmp is writable) once per
///   content, under a name made of the digest.
extension Node {
    public static let shimFileName = "libboxer-shim.so"
    static let trailerMagic = Array("BXSHIM02".utf8)

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

    /// Writes the shim appended to `executable` to the temporary directory, unless a node of the same build did;
    /// nil when none is appended or it cannot be written. Reads the trailer, not the shim, where the file is there:
    /// this runs as every node starts, and in a 128 MB function every millisecond of CPU then counts.
    static func extractEmbeddedShim(from executable: String) -> String? {
        guard let file = ReadOnlyFile(executable) else { return nil }
        let size = file.size
        guard size > 48, let trailer = file.bytes(48, at: size - 48), Array(trailer[32..<40]) == trailerMagic else { return nil }
        let length = trailer[40..<48].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length > 0, length < size - 48 else { return nil }
        // Named by content (the packager's digest), so nodes of one build share the file and a new build never
        // runs an old shim.
        let path = "\(temporaryDirectory)/boxer-mesh-shim-\(trailer[0..<16].hex).so"
        if isOurs(path, size: Int(length)) { return path }
        guard let shim = file.bytes(Int(length), at: size - 48 - Int(length)) else { return nil }
        let temporary = "\(path).\(getpid())"
        guard createFile(temporary, holding: shim, mode: 0o755), rename(temporary, path) == 0 else {
            unlink(temporary)
            return nil
        }
        return path
    }

    /// A shim written out before: a plain file of `size` bytes that this user owns and nobody else may write. Only
    /// a node writes one, whole (it renames it into place), so nothing else needs checking; a file another user
    /// put there is not used (nor can it be replaced: the node then runs without one).
    private static func isOurs(_ path: String, size: Int) -> Bool {
        var status = stat()
        guard lstat(path, &status) == 0 else { return false }
        return status.st_mode & S_IFMT == S_IFREG && status.st_uid == geteuid() && status.st_mode & 0o022 == 0
            && Int(status.st_size) == size
    }
}
