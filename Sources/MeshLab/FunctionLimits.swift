import FoundationEssentials
import Glibc
import PlainText

/// What `lab up --function-memory MB` models: every function host is an AWS Lambda function of that size.
///
/// Its processes run as an unprivileged user without capabilities, in a cgroup with Lambda's CPU share and memory
/// limit for the size, with the root file system read-only and a private `/tmp`, and its link shaped to
/// ``bandwidthMbit`` both ways. See `NATLab+Function.swift` for how.
public struct FunctionLimits: Codable, Sendable, Equatable {
    /// Lambda's memory sizes, in MB.
    public static let memoryRange = 128...10_240
    /// Lambda gives one vCPU per 1,769 MB, in proportion below and above.
    public static let megabytesPerCPU = 1_769
    /// The CFS period the CPU quota is a share of (the kernel's default, 100 ms).
    public static let cpuPeriodMicroseconds = 100_000
    /// About what one Lambda function gets each way, largely whatever its size (third-party measurements).
    public static let defaultBandwidthMbit = 600
    /// The link rates `--function-bandwidth` accepts, in Mbit/s.
    public static let bandwidthRange = 1...100_000
    /// The uid and gid every function-host process runs as: `nobody`, which owns no files.
    public static let user = 65_534
    /// The size of each function host's private `/tmp`: Lambda's default ephemeral storage.
    public static let tmpMegabytes = 512

    /// The function's memory size in MB (1 MB = 1 MiB, as Lambda counts): the hard memory limit, and the CPU share.
    public var memoryMB: Int
    /// The function's link rate in Mbit/s, each way.
    public var bandwidthMbit: Int
    /// Folders inside the machine's `/tmp` that function hosts still see, at the same paths (their `/tmp` is
    /// otherwise their own): a checkout or build there, whose programs the hosts run.
    public var keptFromMachineTmp: [String]

    public init(memoryMB: Int, bandwidthMbit: Int = Self.defaultBandwidthMbit, keptFromMachineTmp: [String] = []) {
        self.memoryMB = memoryMB
        self.bandwidthMbit = bandwidthMbit
        self.keptFromMachineTmp = keptFromMachineTmp.filter { $0.hasPrefix("/tmp/") }
    }

    /// The CFS quota per ``cpuPeriodMicroseconds``: memory / 1,769 of one CPU, rounded
    /// (128 MB → 7,236 µs, 0.072 CPU; 512 MB → 28,943 µs; 1,769 MB → one whole CPU).
    public var cpuQuotaMicroseconds: Int {
        (memoryMB * Self.cpuPeriodMicroseconds + Self.megabytesPerCPU / 2) / Self.megabytesPerCPU
    }

    /// The CPU share as a fraction of one CPU.
    public var cpus: Double { Double(cpuQuotaMicroseconds) / Double(Self.cpuPeriodMicroseconds) }

    /// The hard memory limit in bytes.
    public var memoryBytes: Int { memoryMB * 1024 * 1024 }

    /// Throws ``LabError/Code/invalidConfig`` when a value is out of range.
    public func validate() throws {
        guard Self.memoryRange.contains(memoryMB) else {
            throw LabError(
                .invalidConfig,
                "function memory must be \(Self.memoryRange.lowerBound)...\(Self.memoryRange.upperBound) MB"
                    + " (AWS Lambda's sizes), got \(memoryMB)"
            )
        }
        guard Self.bandwidthRange.contains(bandwidthMbit) else {
            throw LabError(
                .invalidConfig,
                "function bandwidth must be \(Self.bandwidthRange.lowerBound)...\(Self.bandwidthRange.upperBound)"
                    + " Mbit/s, got \(bandwidthMbit)"
            )
        }
    }

    /// One line for people: `128 MB, 0.072 CPU, 600 Mbit/s`.
    public var summary: String {
        "\(memoryMB) MB, \(cpus.fixed(3)) CPU, \(bandwidthMbit) Mbit/s"
    }
}
