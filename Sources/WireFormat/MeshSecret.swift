import FoundationEssentials
import Glibc

/// The shared secret of a mesh, as configured with `--secret-file PATH` or `BOXER_MESH_SECRET`.
/// It never crosses the wire: only keys derived from it (``MeshKey``) are used, and only for HMAC proofs.
public struct MeshSecret: Sendable {
    let bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The empty secret of a broker started with `--insecure`.
    public static let insecure = MeshSecret([])

    /// The environment variable read when no secret file is given.
    public static let environmentVariable = "BOXER_MESH_SECRET"

    /// Loads the secret from `file` if given, else from `BOXER_MESH_SECRET`; nil when neither is set.
    /// Trailing white space (the newline an editor adds) is not part of the secret.
    public static func load(file: String?, environment: [String: String]) throws(SecretError) -> MeshSecret? {
        let text: [UInt8]
        let origin: String
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                let reason = FileManager.default.fileExists(atPath: file) ? "not readable" : "no such file"
                throw SecretError("cannot read secret file \(file): \(reason)")
            }
            text = [UInt8](data)
            origin = "secret file \(file)"
        } else if let value = environment[environmentVariable] {
            text = Array(value.utf8)
            origin = environmentVariable
        } else {
            return nil
        }
        let trimmed = Array(text.reversed().drop(while: { $0 == 0x0a || $0 == 0x0d || $0 == 0x20 || $0 == 0x09 }).reversed())
        guard !trimmed.isEmpty else { throw SecretError("\(origin) is empty") }
        return MeshSecret(trimmed)
    }
}

/// The secret could not be loaded; the message says from where and why.
public struct SecretError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}
