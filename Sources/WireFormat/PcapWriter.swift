import Glibc
import Synchronization

/// Writes captured relay traffic to a classic pcap file (``PcapFormat``), one IPv4 packet per synthesized TCP
/// segment (``CaptureStreams``). Each event's packets go out in one write(2), unbuffered: a reader of the file
/// (tshark on a growing file, or after a Ctrl-C) always sees whole packets. Safe to call from any thread.
public final class PcapWriter: Sendable {
    private let fd: Int32
    public let path: String
    private let state = Mutex((streams: CaptureStreams(), packets: 0))

    /// Packets written so far.
    public var packets: Int { state.withLock { $0.packets } }

    /// Creates (or truncates) the file at `path` and writes the pcap file header.
    public init(path: String) throws(PcapWriteError) {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PcapWriteError(path: path, action: "cannot create", errno: errno) }
        do {
            try write(PcapFormat.fileHeader())
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    /// Writes the packets of one capture event (nothing for other events); returns warnings about bytes the
    /// capture missed.
    @discardableResult
    public func write(_ event: TapEvent) throws(PcapWriteError) -> [String] {
        guard case .capture(let segment) = event.event else { return [] }
        return try state.withLock { (state) throws(PcapWriteError) -> [String] in
            let (packets, warnings) = state.streams.packets(for: segment)
            let microseconds = event.timeUnixMs * 1000
            var bytes: [UInt8] = []
            for packet in packets { bytes += PcapFormat.record(microseconds: microseconds, packet: packet.bytes) }
            try write(bytes)
            state.packets += packets.count
            return warnings
        }
    }

    private func write(_ bytes: [UInt8]) throws(PcapWriteError) {
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                throw PcapWriteError(path: path, action: "cannot write to", errno: errno)
            }
            written += result
        }
    }
}

/// The pcap file could not be created or written (disk full, no permission, no such directory).
public struct PcapWriteError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let action: String
    public let errno: Int32

    public var description: String { "\(action) pcap file \(path): \(String(cString: strerror(errno)))" }
}
