/// Durations as the millisecond counts that poll(), zmq_poll() and the schema's `*_ms` fields take, and microseconds.
extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }

    /// Whole microseconds, rounded down (the schema's `*_us` fields).
    public var microseconds: Int64 { components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000 }

    /// A poll timeout that never wakes before the duration is over: rounded up, 0 for a duration already past.
    public var pollTimeout: Int32 { self <= .zero ? 0 : Int32(clamping: milliseconds + 1) }
}
