import ChildProcess
import FoundationEssentials
import Glibc
import PlainText

/// Adds delay and loss to lab links without netem (this project's kernels are built without `sch_netem`).
///
/// iptables rules (``NATLab/delayRules(for:)``) send the packets to netfilter queue 0 of a namespace; a small
/// python3 program there, speaking nfnetlink_queue directly, holds each packet for the delay and then accepts it
/// (or drops it, for loss). It copies only packet metadata, never payloads. One runs per delayed namespace,
/// detached, until `down` kills every process in the lab's namespaces. Being userspace, it costs CPU per packet:
/// measure throughput without `--delay`.
enum LabDelayer {
    /// The netfilter queue number the rules and the delayer use (queues are per namespace).
    static let queue = 0

    /// Writes the delayer program to `scriptPath`, starts it in `namespace` (stdout and stderr to `logPath`) and
    /// waits until it is bound to the queue. Returns its pid.
    static func start(
        namespace: String,
        ip: String,
        python: String,
        scriptPath: String,
        logPath: String,
        delayMs: Int,
        lossPercent: Double
    ) throws -> Int32 {
        let fileManager = FileManager.default
        if !fileManager.fileExists(atPath: scriptPath) {
            guard fileManager.createFile(atPath: scriptPath, contents: Data(script.utf8)) else {
                throw LabError(.stateFile, "cannot write \(scriptPath)")
            }
        }
        // One descriptor for both streams: they share its offset, so neither overwrites the other.
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard log >= 0 else {
            throw LabError(.stateFile, "cannot create \(logPath): \(String(cString: strerror(errno)))")
        }

        let arguments = [
            ip, "netns", "exec", namespace, python, scriptPath, "\(queue)", "\(delayMs)", "\(lossPercent)",
        ]
        let process: ChildProcess
        do throws(SpawnError) {
            defer { close(log) }
            process = try ChildProcess(
                arguments,
                standardInput: .null,
                standardOutput: .descriptor(log),
                standardError: .descriptor(log)
            )
        } catch {
            throw LabError(.launchFailed, "cannot start the delayer `\(LabShell.quoted(arguments))`: \(error.reason)")
        }

        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let output = String(decoding: fileManager.contents(atPath: logPath) ?? Data(), as: UTF8.self)
            if output.contains("ready\n") { return process.pid }
            if !process.isRunning || ContinuousClock.now >= deadline {
                process.send(SIGTERM)
                let why = process.isRunning ? "did not get ready within 10 s" : "exited"
                throw LabError(
                    .commandFailed,
                    "delayer `\(LabShell.quoted(arguments))` \(why): "
                        + output.trimmingWhitespace(),
                    command: arguments,
                    standardError: output
                )
            }
            usleep(10_000)
        }
    }

    /// The delayer: `delayer.py QUEUE DELAY_MS LOSS_PCT`. Prints `ready` once bound to the queue.
    static let script = #"""
        # boxer-mesh lab delayer: holds each packet of netfilter queue QUEUE for DELAY_MS, drops LOSS_PCT % of them.
        # Usage: delayer.py QUEUE DELAY_MS LOSS_PCT. Prints "ready" once bound. Speaks nfnetlink_queue directly.
        # Written by MeshLab (Sources/MeshLab/LabDelayer.swift); `boxer-mesh lab down` ends it.
        import collections, os, random, select, signal, socket, struct, sys, time

        queue, delay, loss = int(sys.argv[1]), float(sys.argv[2]) / 1000.0, float(sys.argv[3]) / 100.0
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            os.setsid()  # outlive the terminal and the `lab up` that started it
        except OSError:
            pass

        NETLINK_NETFILTER = 12
        NLM_F_REQUEST, NLM_F_ACK = 1, 4
        NLMSG_ERROR = 2
        QUEUE = 3 << 8  # NFNL_SUBSYS_QUEUE
        QUEUE_PACKET, QUEUE_VERDICT, QUEUE_CONFIG, QUEUE_VERDICT_BATCH = QUEUE | 0, QUEUE | 1, QUEUE | 2, QUEUE | 3
        NF_DROP, NF_ACCEPT = 0, 1

        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        for option in (33, 8):  # SO_RCVBUFFORCE (root), then SO_RCVBUF
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 32 << 20)
                break
            except OSError:
                pass
        sock.bind((0, 0))
        seq = 0

        def attr(kind, payload):
            data = struct.pack("=HH", 4 + len(payload), kind) + payload
            return data + b"\0" * (-len(data) % 4)

        def send(kind, attrs, flags=NLM_F_REQUEST):
            global seq
            seq += 1
            body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
            sock.send(struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body)

        def configure(attrs):
            send(QUEUE_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK)
            data = sock.recv(65536)
            length, kind = struct.unpack_from("=IH", data)
            if kind == NLMSG_ERROR:
                error = struct.unpack_from("=i", data, 16)[0]
                if error:
                    print("nfqueue config failed:", os.strerror(-error), flush=True)
                    sys.exit(1)

        configure([attr(1, struct.pack("=BBH", 1, 0, 0))])                # NFQA_CFG_CMD: bind
        configure([attr(2, struct.pack(">IB", 0, 1))])                    # NFQA_CFG_PARAMS: copy metadata only
        configure([attr(3, struct.pack(">I", 1 << 16))])                  # NFQA_CFG_QUEUE_MAXLEN
        configure([attr(5, struct.pack(">I", 4)), attr(4, struct.pack(">I", 4))])  # NFQA_CFG_FLAGS/MASK: GSO
        print("ready", flush=True)

        held = collections.deque()  # (release time, packet id), in arrival order
        while True:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
            readable, _, _ = select.select([sock], [], [], timeout)
            if readable:
                try:
                    data = sock.recv(1 << 20)
                except OSError:  # ENOBUFS: notifications lost; the batch verdict below still releases those packets
                    data = b""
                now = time.monotonic()
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if length < 16:
                        break
                    if kind == QUEUE_PACKET:
                        position = offset + 20
                        while position + 4 <= offset + length:
                            size, atype = struct.unpack_from("=HH", data, position)
                            if size < 4:
                                break
                            if atype & 0x3FFF == 1:  # NFQA_PACKET_HDR: packet id first
                                packet = struct.unpack_from(">I", data, position + 4)[0]
                                if loss and random.random() < loss:
                                    send(QUEUE_VERDICT, [attr(2, struct.pack(">II", NF_DROP, packet))])
                                else:
                                    held.append((now + delay, packet))
                                break
                            position += (size + 3) & ~3
                    offset += (length + 3) & ~3
            now = time.monotonic()
            last = None
            while held and held[0][0] <= now:
                last = held.popleft()[1]
            if last is not None:
                send(QUEUE_VERDICT_BATCH, [attr(2, struct.pack(">II", NF_ACCEPT, last))])
        """#
}
