import ChildProcess
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The case that crashed Foundation's `Process.run()` (SIGSEGV in `findMaximumOpenFromProcSelfFD`): many children
/// started at once while this process holds many descriptors.
@Suite(.timeLimit(.minutes(2))) struct LoadTests {
    @Test func manyConcurrentSpawnsWhileManyDescriptorsAreOpen() async throws {
        let held = try Descriptors(count: 1500)
        defer { held.close() }

        let statuses = try await withThrowingTaskGroup(of: Int32.self) { group in
            for index in 0..<200 {
                group.addTask {
                    let child = try ChildProcess(index.isMultiple(of: 2) ? ["true"] : ["/bin/true"])
                    return await child.exitStatus()
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(statuses.count == 200)
        #expect(statuses.allSatisfy { $0 == 0 }, "statuses: \(statuses.filter { $0 != 0 })")

        // None of the held descriptors reached a child.
        let last = try #require(held.fds.last)
        #expect(try ChildProcess.run(["/bin/sh", "-c", "[ -e /proc/self/fd/$0 ]", "\(last)"]).status == 1)
    }
}

/// Descriptors held open (without close-on-exec, like a careless library's) for the length of a test: half
/// `/dev/null`, half UDP sockets. Raises the soft descriptor limit if it is too low.
struct Descriptors {
    let fds: [Int32]

    init(count: Int) throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let needed = rlim_t(count + 512)
        if limit.rlim_cur < needed {
            try #require(limit.rlim_max >= needed, "the hard descriptor limit is \(limit.rlim_max)")
            limit.rlim_cur = needed
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        var fds: [Int32] = []
        for index in 0..<count {
            let fd =
                index.isMultiple(of: 2) ? open("/dev/null", O_RDONLY) : socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            if fd < 0 { fds.forEach { _ = Glibc.close($0) } }
            try #require(fd >= 0, "descriptor \(index): errno \(errno)")
            fds.append(fd)
        }
        self.fds = fds
    }

    func close() {
        fds.forEach { _ = Glibc.close($0) }
    }
}
