/// CRC-32 as used by STUN's FINGERPRINT (ISO-HDLC / IEEE 802.3: reflected polynomial 0xEDB88320, initial value and
/// final XOR 0xFFFFFFFF; `CRC32.checksum("123456789")` is 0xCBF43926). Table-driven, one byte at a time.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 {
            crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
        }
        return crc
    }

    /// The CRC-32 of the bytes.
    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { table in
            for byte in bytes {
                crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
            }
        }
        return crc ^ 0xFFFF_FFFF
    }
}

extension STUNMessage {
    /// The value XOR-ed into the CRC-32 to form FINGERPRINT ("STUN" in ASCII).
    static let fingerprintXOR: UInt32 = 0x5354_554E

    /// FINGERPRINT value for the given message bytes (everything before the FINGERPRINT attribute, with the header
    /// length already counting the FINGERPRINT attribute).
    static func fingerprint(of bytes: some Sequence<UInt8>) -> UInt32 {
        CRC32.checksum(bytes) ^ fingerprintXOR
    }
}
