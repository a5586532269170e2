/// The few text helpers the broker, node and lab used from Foundation, without it: linking Foundation (not
/// FoundationEssentials) into the node puts ICU and 40 MB into a binary that must fit the smallest function.

extension StringProtocol {
    /// The text without leading and trailing whitespace (spaces, tabs, newlines).
    public func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

extension BinaryFloatingPoint {
    /// The value with exactly `decimals` digits after the point, rounded half away from zero: `2.0.fixed(1)` is
    /// `"2.0"`, `0.0724.fixed(3)` is `"0.072"`. For figures people read; not for values beyond ±9e18.
    public func fixed(_ decimals: Int) -> String {
        guard isFinite else { return "\(self)" }
        var scale: Int64 = 1
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (Double(self) * Double(scale)).rounded(.toNearestOrAwayFromZero)
        let magnitude = Int64(abs(scaled))
        let sign = scaled < 0 && magnitude != 0 ? "-" : ""
        let whole = "\(magnitude / scale)"
        guard decimals > 0 else { return sign + whole }
        let fraction = "\(magnitude % scale)"
        return sign + whole + "." + String(repeating: "0", count: decimals - fraction.count) + fraction
    }
}

extension BinaryInteger {
    /// Lowercase hexadecimal, zero-padded to at least `width` digits: `10.hex(width: 2)` is `"0a"`.
    public func hex(width: Int = 1) -> String {
        let digits = String(self, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

extension Sequence<UInt8> {
    /// The bytes as lowercase hexadecimal, two digits each.
    public var hex: String {
        var text: [UInt8] = []
        text.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            text.append(hexDigits[Int(byte >> 4)])
            text.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

private let hexDigits = Array("0123456789abcdef".utf8)
