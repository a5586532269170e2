import CNodeSupport
import FoundationEssentials
import Glibc
import PlainText

/// What the kernel's socket tables say, for facts the app's announcements alone cannot settle.
enum KernelSockets {
    /// Whether a TCP socket in this network namespace listens on `port` on a wildcard address (0.0.0.0 or ::) or
    /// 127.0.0.1, the listeners a signal connection to 127.0.0.1 can reach. Asks sock_diag for listeners only;
    /// where that is not allowed, reads /proc/net/tcp{,6} (which can miss a listener while other sockets come and
    /// go: the kernel walks its tables between reads).
    static func isListening(onWildcardPort port: UInt16) -> Bool {
        switch boxer_tcp_listening(port) {
        case 1: return true
        case 0: return false
        default: break
        }
        let portHex = port.hex(width: 4).uppercased()
        let wildcards = ["00000000:\(portHex)", "0100007F:\(portHex)", "00000000000000000000000000000000:\(portHex)"]
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                // fields: sl, local_address, rem_address, st (0A = LISTEN), ...
                if fields.count > 3, fields[3] == "0A", wildcards.contains(String(fields[1])) { return true }
            }
        }
        return false
    }
}
