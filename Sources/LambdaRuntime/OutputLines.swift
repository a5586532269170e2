/// The last lines of a stream of output, bounded in lines and bytes: what an invocation's response carries of its
/// app's output. A line longer than the byte bound keeps its end; a last line without a newline counts too.
struct OutputLines: Sendable {
    /// At most this many lines…
    static let maximumLines = 50
    /// …and this many bytes of them (newlines not counted).
    static let maximumBytes = 4096

    private var lines: [[UInt8]] = []
    private var bytes = 0
    /// The line being written, not ended by a newline yet.
    private var partial: [UInt8] = []

    /// Adds output as it arrived (any chunking).
    mutating func append(_ chunk: some Collection<UInt8>) {
        for byte in chunk {
            if byte == 10 {
                push(partial)
                partial.removeAll(keepingCapacity: true)
            } else if partial.count < Self.maximumBytes {
                partial.append(byte)
            } else {
                partial.removeFirst(partial.count - Self.maximumBytes + 1)
                partial.append(byte)
            }
        }
    }

    /// The kept lines, oldest first, as text (invalid UTF-8 repaired).
    var text: [String] {
        var copy = self
        if !partial.isEmpty { copy.push(partial) }
        return copy.lines.map { String(decoding: $0, as: UTF8.self) }
    }

    private mutating func push(_ line: [UInt8]) {
        lines.append(line)
        bytes += line.count
        while lines.count > Self.maximumLines || bytes > Self.maximumBytes {
            bytes -= lines.removeFirst().count
        }
    }
}
