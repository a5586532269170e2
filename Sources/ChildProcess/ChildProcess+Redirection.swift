extension ChildProcess {
    /// Where one of a child's standard streams (input, output or error) is connected.
    public enum Redirection: Sendable, Equatable {
        /// The child shares this process's stream.
        case inherit
        /// `/dev/null`: reading gives end of file, writing is discarded.
        case null
        /// A file, opened by this process before the start: read-only for standard input; for output and error,
        /// write-only, created (mode 0644) or truncated.
        case file(String)
        /// An open descriptor of this process, duplicated into the child. The caller still owns it and closes it
        /// (after the start, it no longer matters to the child).
        case descriptor(Int32)
    }
}
