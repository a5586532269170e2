import Testing

@testable import LambdaRuntime

/// The output tail keeps the last lines within both bounds, whatever the chunking.
@Suite struct OutputLinesTests {
    @Test func lastLinesWithinTheLineBound() {
        var lines = OutputLines()
        for number in 1...120 { lines.append(Array("line \(number)\n".utf8)) }
        #expect(lines.text.count == OutputLines.maximumLines)
        #expect(lines.text.first == "line 71")
        #expect(lines.text.last == "line 120")
    }

    @Test func byteBoundDropsOldLines() {
        var lines = OutputLines()
        let long = String(repeating: "x", count: 1000)
        for _ in 1...6 { lines.append(Array("\(long)\n".utf8)) }
        lines.append(Array("tail".utf8))
        #expect(lines.text.count == 5)  // four whole lines and the unfinished one fit in 4096 bytes
        #expect(lines.text.last == "tail")
        #expect(lines.text.map(\.utf8.count).reduce(0, +) <= OutputLines.maximumBytes)
    }

    @Test func aHugeLineKeepsItsEnd() {
        var lines = OutputLines()
        lines.append(Array((String(repeating: "a", count: 10_000) + "END\n").utf8))
        #expect(lines.text.count == 1)
        #expect(lines.text[0].utf8.count == OutputLines.maximumBytes)
        #expect(lines.text[0].hasSuffix("END"))
    }

    @Test func chunksSplitAnywhere() {
        var lines = OutputLines()
        for byte in "one\ntwo\nthr".utf8 { lines.append([byte]) }
        lines.append(Array("ee\n".utf8))
        #expect(lines.text == ["one", "two", "three"])
    }
}
