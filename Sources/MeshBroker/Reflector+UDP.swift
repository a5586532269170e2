import Glibc
import WireFormat

extension ReflectorLoop {
    /// Reads up to ``batch`` datagrams and answers each Binding request to the address it came from.
    func readDatagrams(_ fd: Int32) {
        for _ in 0..<Self.batch {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            // MSG_TRUNC makes recvfrom return the datagram's real size even when it did not fit.
            let received = datagram.withUnsafeMutableBytes { buffer in
                withUnsafeMutablePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC), $0, &length)
                    }
                }
            }
            if received < 0 {
                let code = errno
                if code == EINTR { continue }
                if code != EAGAIN && code != EWOULDBLOCK {
                    // e.g. an ICMP error queued for an earlier answer; nothing to do but carry on.
                    logger.debug("STUN UDP receive failed: \(ReflectorSocket.describe(errno: code))")
                }
                return
            }
            guard let peer = Endpoint(socketAddress: storage) else { continue }
            guard received < datagram.count else {
                udpBadInput.drop("datagram of \(received) bytes from \(peer) is larger than any STUN request")
                continue
            }
            switch Reflector.answer(to: datagram[0..<received], from: peer, software: configuration.software) {
            case .drop(let reason):
                udpBadInput.drop(reason)
            case .reply(let response):
                send(response.encoded(), to: storage, length: length, on: fd)
                udpAnswered += 1
            }
        }
    }

    private func send(_ bytes: [UInt8], to storage: sockaddr_storage, length: socklen_t, on fd: Int32) {
        var storage = storage
        let sent = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT), $0, length)
                }
            }
        }
        if sent < 0 {
            // A full send buffer under a flood: the client retransmits, so dropping the answer is fine.
            logger.debug("STUN UDP answer not sent: \(ReflectorSocket.describe(errno: errno))")
        }
    }
}
