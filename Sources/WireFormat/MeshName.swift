/// Mesh and node names: they become host names inside the apps, so they follow DNS label rules.
public enum MeshName {
    /// Returns `name` lowercased (host names are case-insensitive) if it is a valid label: 1–63 characters of
    /// a–z, 0–9 and '-', not starting or ending with '-', and not all digits (so it never reads as an address).
    /// `role` names the thing in the error ("node name", "mesh name").
    public static func validated(_ name: String, role: String) throws(InvalidName) -> String {
        let lower = name.lowercased()
        guard !lower.isEmpty else { throw InvalidName("\(role) must not be empty") }
        guard lower.utf8.count <= 63 else { throw InvalidName("\(role) '\(name)' is longer than 63 characters") }
        guard lower.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }) else {
            throw InvalidName("\(role) '\(name)' may only contain letters, digits and '-'")
        }
        guard lower.first != "-", lower.last != "-" else {
            throw InvalidName("\(role) '\(name)' must not start or end with '-'")
        }
        guard !lower.allSatisfy(\.isNumber) else { throw InvalidName("\(role) '\(name)' must not be all digits") }
        return lower
    }

    /// Room for "-" and six digits within a label's 63 characters.
    public static let maximumPrefixLength = 56

    /// Returns `prefix` lowercased if `<prefix>-N` makes a valid node name (the broker completes a prefix so).
    public static func validatedPrefix(_ prefix: String) throws(InvalidName) -> String {
        let lower = try validated(prefix, role: "node name prefix")
        guard lower.utf8.count <= maximumPrefixLength else {
            throw InvalidName("node name prefix '\(prefix)' is longer than \(maximumPrefixLength) characters")
        }
        return lower
    }
}

/// A name broke the naming rules; the message says which rule.
public struct InvalidName: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}
