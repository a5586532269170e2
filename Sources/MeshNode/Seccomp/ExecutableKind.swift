import FoundationEssentials
import Glibc

/// What kind of program a command is, as far as reaching it goes: the preload shim reaches programs that call the
/// C library dynamically; static binaries and Go programs (which make their socket calls directly, cgo or not)
/// need the seccomp supervisor.
enum ExecutableKind: Equatable, Sendable {
    /// A dynamically linked ELF program (it has a PT_INTERP).
    case dynamic
    /// An ELF program without an interpreter: its C library, if any, is linked in.
    case staticBinary
    /// A Go program (a `.go.buildinfo` or `.note.go.buildid` section), static or not.
    case go
    /// Not an ELF file (a `#!` script: its interpreter is what runs).
    case script

    /// Whether the preload shim cannot reach this program.
    var needsSupervisor: Bool { self == .staticBinary || self == .go }

    /// Classifies the ELF file at `path`.
    static func inspect(path: String) throws(ExecutableInspectionError) -> ExecutableKind {
        let file = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else {
            throw ExecutableInspectionError(path: path, reason: "cannot be opened: \(String(cString: strerror(errno)))")
        }
        defer { close(file) }
        func read(_ offset: UInt64, _ count: Int) throws(ExecutableInspectionError) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            let got = count == 0 ? 0 : bytes.withUnsafeMutableBytes { pread(file, $0.baseAddress, count, off_t(truncatingIfNeeded: offset)) }
            guard got >= 0 else { throw ExecutableInspectionError(path: path, reason: "cannot be read: \(String(cString: strerror(errno)))") }
            guard got == count else { throw ExecutableInspectionError(path: path, reason: "is truncated") }
            return bytes
        }
        let header = (try? read(0, 64)) ?? []
        guard header.count == 64, header[0..<4].elementsEqual([0x7f, 0x45, 0x4c, 0x46]) else { return .script }
        guard header[4] == 2, header[5] == 1 else {
            throw ExecutableInspectionError(path: path, reason: "is not a 64-bit little-endian ELF file")
        }
        func integer(_ bytes: [UInt8], _ at: Int, _ size: Int) -> UInt64 {
            bytes[at..<at + size].reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        let (programOffset, programSize, programCount) = (integer(header, 0x20, 8), Int(integer(header, 0x36, 2)), Int(integer(header, 0x38, 2)))
        let (sectionOffset, sectionSize, sectionCount) = (integer(header, 0x28, 8), Int(integer(header, 0x3a, 2)), Int(integer(header, 0x3c, 2)))
        let namesIndex = Int(integer(header, 0x3e, 2))
        guard programSize >= 56 || programCount == 0, sectionSize >= 64 || sectionCount == 0, programCount < 4096, sectionCount < 65280 else {
            throw ExecutableInspectionError(path: path, reason: "has malformed ELF headers")
        }
        let programs = try read(programOffset, programSize * programCount)
        let interpreted = (0..<programCount).contains { integer(programs, $0 * programSize, 4) == 3 }  // PT_INTERP
        if sectionCount > 0, namesIndex < sectionCount {
            let sections = try read(sectionOffset, sectionSize * sectionCount)
            let names = namesIndex * sectionSize
            let namesTable = try read(integer(sections, names + 0x18, 8), Int(min(integer(sections, names + 0x20, 8), 1 << 20)))
            for index in 0..<sectionCount {
                let start = Int(integer(sections, index * sectionSize, 4))
                guard start < namesTable.count else { continue }
                let name = String(decoding: namesTable[start...].prefix { $0 != 0 }, as: UTF8.self)
                if name == ".go.buildinfo" || name == ".note.go.buildid" { return .go }
            }
        }
        return interpreted ? .dynamic : .staticBinary
    }

    /// The file `command` runs: itself if it holds a '/', else the first executable match in `PATH`.
    static func locate(_ command: String, path: String?) -> String? {
        if command.contains("/") { return command }
        for folder in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(folder)/\(command)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// An executable could not be classified.
struct ExecutableInspectionError: Error, CustomStringConvertible, Sendable {
    var path: String
    var reason: String
    var description: String { "\(path) \(reason)" }
}
