/// Every timer of the node, in one place. ``Timing/Wire`` holds what the other end (the broker, the peer node)
/// counts on: change one and the two sides disagree. ``Timing/Choice`` holds this node's own trade-offs: change
/// one and only this node behaves differently.
enum Timing {
    /// Values the broker or the peer relies on.
    enum Wire {
        /// A peer must answer an upgrade's punch OFFER within this (the initiator then gives the attempt up).
        static let upgradeAnswer = Duration.seconds(5)
        /// A proven link needs both proofs: each end waits this long for the other's after its punch landed.
        static let proof = Duration.seconds(2)
        /// The relay's DEALER heartbeats: ZeroMQ's own ping every 2 s, the connection counted dead after 10 s.
        static let relayHeartbeat = Duration.seconds(2)
        static let relayHeartbeatTimeout = Duration.seconds(10)
        /// Hello on the relay: it tells the broker's relay (which forgets idle nodes) that this node is still here.
        static let relayHello = Duration.seconds(5)
        /// How long a relayed connection waits for a restarted broker's relay to take it back; both ends reset
        /// after it, so neither waits for the other for ever.
        static let relayResume = Duration.seconds(10)
    }

    /// This node's own trade-offs.
    enum Choice {
        // Punching.
        /// One punch attempt waits this long for its SYN to be answered (a SYN the far NAT dropped never is).
        static let punchAttempt = Duration.milliseconds(300)
        /// Between refused attempts: the far side had no SYN out yet.
        static let punchRetry = Duration.milliseconds(20)
        /// A punch checks whether it was abandoned at least this often.
        static let punchSlice = Duration.milliseconds(25)
        /// Punching when the relay is forbidden and no --punch-timeout is given.
        static let punchWithoutRelay = Duration.seconds(5)
        /// With the relay allowed the connecting side punches max(this, 4 × broker RTT) before it relays…
        static let punchBeforeRelay = Duration.seconds(1)
        /// …or at least this towards a peer a relayed connection was upgraded with (punching works there).
        static let punchKnownPeer = Duration.seconds(3)
        /// Assumed broker round trip until one was measured.
        static let assumedBrokerRTT = Duration.milliseconds(250)
        /// The accepting side punches this long (or the --punch-timeout, if longer) unless the connecting side
        /// relays first…
        static let acceptorPunch = Duration.seconds(10)
        /// …a slice at a time, so that a connection that went to the relay stops punching soon.
        static let acceptorPunchSlice = Duration.seconds(1)
        /// A failed punch towards a peer makes new connections to it relay at once for this long.
        static let unpunchableMemory = Duration.seconds(300)
        /// How long one relayed connection's upgrade attempt may punch (default of --upgrade options).
        static let upgradePunch = Duration.seconds(2)
        /// The first upgrade attempt starts this long after the relay opened, and backs off doubling…
        static let upgradeFirst = Duration.seconds(1)
        /// …up to this (default of --upgrade-max-interval).
        static let upgradeMaxInterval = Duration.seconds(30)
        /// With --relay-splice, a node that punches tries this many upgrade attempts by punching before it moves the
        /// connection onto the broker's splice port (which it cannot leave again), then splices and punches in turn;
        /// one that does not punch, or relays at once because a punch towards the peer just failed, splices at once.
        static let punchesBeforeSplice: UInt32 = 2
        /// How long a splice attempt may take: dial the broker, wait for the other end, prove the link.
        static let spliceAttempt = Duration.seconds(5)
        /// An upgraded connection still draining its relay bytes is looked at again this soon for its handoff…
        static let handoffRecheck = Duration.milliseconds(10)
        /// …and one whose handoff the app's shim declined, after this, doubling…
        static let handoffRetry = Duration.seconds(1)
        /// …for this many declines; then it stays on the node's copy loop.
        static let handoffAttempts = 6

        // Public endpoints.
        /// One exchange with the broker's reflector.
        static let reflector = Duration.seconds(3)
        /// A warm endpoint (learned ahead of a connect) older than this is learned again: NATs keep an unused
        /// mapping for at least 30 s.
        static let warmLifetime = Duration.seconds(20)
        /// The first endpoint advertised for inbound connections is learned when the app first listens, else this
        /// long after the node started, not during its start: in a small function every reflector exchange then
        /// would delay the app's start.
        static let firstAdvert = Duration.seconds(1)
        /// An endpoint a connect used up (the warm one, or the one advertised for inbound connections) is learned
        /// anew this long after, not at once: the reflector exchange (both ends' kernels, the broker's reflector)
        /// would share the CPU with the connect itself. Measured at no added delay, where CPU is what a connect
        /// waits for.
        static let relearnDelay = Duration.milliseconds(10)
        /// A withdrawn offer is remembered this long (its connect may not have its offer yet).
        static let withdrawalMemory = Duration.seconds(30)

        // Start-up.
        /// The app starts once the node's own start-up work is done (the relay attached, the first warm endpoint
        /// learned), or after this at most (a few ms as a rule). In a small function that work would otherwise
        /// share the CPU quota of the app's first period with its first connect, which then waits for the next
        /// period (100 ms): measured in 128 MB functions, 13 of 20 first connects did so before, 7 of 20 after.
        static let startupBeforeApp = Duration.milliseconds(300)

        // Spare links.
        /// A claim that waits for its answer must have it within max(this, 4 × broker RTT); one that is not is dead (a NAT
        /// dropped its mapping) and the connect tries the next. Long enough for a peer node in a 128 MB function,
        /// whose CPU quota may stall it for most of a 100 ms period.
        static let spareAnswer = Duration.milliseconds(250)
        /// The accepting node believes the kernel's word that a port listens this long (``LinkManager/isListening(on:)``).
        static let listenerCheck = Duration.milliseconds(100)
        /// A connect claims a spare without waiting for the peer's answer (no round trip) only for a port the
        /// peer accepted a connection on within this. A port the peer's app closed since is learned too late for
        /// such a claim: its app sees its first read or write reset, where a claim that waits sees the refusal.
        static let listenerMemory = Duration.seconds(1)
        /// A spare is claimed without an answer only while the kernel heard from the peer within this: spares
        /// probe every ``spareProbeSeconds`` (TCP keepalive, all in the kernel), so a live one is never staler, and
        /// one whose path died longer ago than this is claimed the waiting way, which finds it dead.
        static let spareFreshness = Duration.milliseconds(1500)
        /// Keepalive idle time of a spare on the connecting side (the link's own, ``LinkLiveness``, once an app
        /// holds it).
        static let spareProbeSeconds: Int32 = 1
        /// The accepting side reads a claim this long at most (it comes in one segment: all of it is there, in
        /// practice, when the first byte is).
        static let spareClaimRead = Duration.milliseconds(100)
        /// Punching a spare link, both sides.
        static let sparePunch = Duration.seconds(5)
        /// A peer gets spare links once the app connected to it three times within this.
        static let spareDemandWindow = Duration.seconds(10)
        /// A peer the app has not connected to for this long loses its spare links.
        static let spareIdle = Duration.seconds(60)
        /// A peer that refused a spare link, or for which three failed in a row, gets none for this long.
        static let spareBackoff = Duration.seconds(30)

        // Accepting.
        /// The accepting side waits this long for a connection to come up, direct or relayed.
        static let acceptorWait = Duration.seconds(30)
        /// An inbound link the app does not accept within this is reset…
        static let unacceptedLifetime = Duration.seconds(30)
        /// …checked this often.
        static let unacceptedSweep = Duration.seconds(5)
        /// A signal connection may take this long to reach the app's listener: a full accept queue drops SYNs,
        /// and the kernel retries after 1, 2 and 4 s.
        static let signalConnect = Duration.seconds(10)
        /// A connection to our own mesh address (plain loopback).
        static let loopbackConnect = Duration.seconds(2)

        // Relay.
        /// The broker must open a relayed connection within this after we asked.
        static let relayOpen = Duration.seconds(5)

        // The seccomp supervisor.
        /// A link built for a connect that a signal interrupted waits this long for the app's retry (at once, in
        /// practice: the kernel restarts the call, or the app retries after EINTR), then is closed.
        static let unclaimedConnect = Duration.seconds(5)
        /// A non-blocking connect's stand-in, writable once its link is up, waits this long for the app to ask how
        /// the connect went (getsockopt SO_ERROR, at once in practice) before the node bridges it to the link, for
        /// an app that waits for the server to speak first without asking. Generous: an event loop in a small
        /// function may get the CPU only every 100 ms, and a bridge costs the node CPU for the connection's life.
        static let standInGrace = Duration.seconds(1)

        // The tap's reports.
        /// Closed connections are reported this long after the first of them closed, together with those that
        /// closed meanwhile: an app that connects per request closes hundreds a second.
        static let closeReportDelay = Duration.milliseconds(100)
        /// Link reports wait this long at most, so those of an app that connects per request reach the broker
        /// together; so does a target's acceptance of a connection whose requester punches already (the broker
        /// waits 5 s for it). Shorter than ``closeReportDelay``: a connection's report comes before either side's close.
        static let reportDelay = Duration.milliseconds(50)

        // Blocking pool.
        /// A pool thread with nothing to do for this long ends (the pool grows again on demand).
        static let poolIdle = Duration.seconds(10)
    }
}
