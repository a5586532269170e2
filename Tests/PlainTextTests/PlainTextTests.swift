import PlainText
import Testing

@Suite("Text helpers that replace Foundation's")
struct PlainTextTests {
    @Test("fixed decimals round half away from zero and pad with zeros", arguments: [
        (2.0, 1, "2.0"), (0.0724, 3, "0.072"), (0.0725, 3, "0.073"), (-1.25, 1, "-1.3"), (-0.04, 1, "0.0"),
        (12.345, 0, "12"), (1e6 / 3, 2, "333333.33"), (0.5, 3, "0.500"),
    ])
    func fixed(value: Double, decimals: Int, expected: String) {
        #expect(value.fixed(decimals) == expected)
    }

    @Test("non-finite values are spelled out, not trapped on")
    func nonFinite() {
        #expect(Double.infinity.fixed(1) == "inf")
        #expect(Double.nan.fixed(2) == "nan")
    }

    @Test("hex pads to the width and never truncates")
    func hex() {
        #expect(10.hex(width: 2) == "0a")
        #expect(UInt16(0x1f90).hex(width: 4).uppercased() == "1F90")
        #expect(UInt32(0x12345).hex(width: 4) == "12345")
        #expect([UInt8]([0, 255, 16]).hex == "00ff10")
    }

    @Test("trimming drops whitespace at both ends only")
    func trimming() {
        #expect("  a b\n\t".trimmingWhitespace() == "a b")
        #expect(" \n ".trimmingWhitespace() == "")
        #expect("x".trimmingWhitespace() == "x")
    }
}
