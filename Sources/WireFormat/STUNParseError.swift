/// Why bytes could not be read as a STUN message. Its description says what was wrong and where, e.g.
/// `STUN message rejected: wrong magic cookie 0x00000000 (expected 0x2112A442)`.
public struct STUNParseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of problem, for code that wants to react to it.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case truncated, notSTUN, badLength, tooLong, badCookie, badAttribute, badFingerprint
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// Fewer bytes than the header or the announced length need.
        public static let truncated = Code(.truncated)
        /// The first two bits are not zero, so this is not a STUN message.
        public static let notSTUN = Code(.notSTUN)
        /// The header's length is not a multiple of 4, or disagrees with the bytes given.
        public static let badLength = Code(.badLength)
        /// The message is larger than the accepted maximum.
        public static let tooLong = Code(.tooLong)
        /// The magic cookie is not 0x2112A442 (and classic RFC 3489 messages were not allowed).
        public static let badCookie = Code(.badCookie)
        /// An attribute overruns the message or has a value of the wrong size or content.
        public static let badAttribute = Code(.badAttribute)
        /// FINGERPRINT is wrong, or is not the last attribute.
        public static let badFingerprint = Code(.badFingerprint)

        public var description: String {
            switch value {
            case .truncated: "truncated"
            case .notSTUN: "notSTUN"
            case .badLength: "badLength"
            case .tooLong: "tooLong"
            case .badCookie: "badCookie"
            case .badAttribute: "badAttribute"
            case .badFingerprint: "badFingerprint"
            }
        }
    }

    /// The kind of problem.
    public var code: Code
    /// What exactly was wrong, in words.
    public var detail: String
    /// Byte offset into the message where the problem was found, when there is one.
    public var offset: Int?

    /// An error of the given kind.
    public init(_ code: Code, _ detail: String, offset: Int? = nil) {
        self.code = code
        self.detail = detail
        self.offset = offset
    }

    public var description: String {
        "STUN message rejected: \(detail)" + (offset.map { " (at byte \($0))" } ?? "")
    }
}
