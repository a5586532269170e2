import FoundationEssentials
import Glibc
import Logging

extension Node {
    /// Starts the app the way ``NodeConfiguration/interpose`` chooses (the log says which and why): with the
    /// preload shim in LD_PRELOAD, or under the seccomp supervisor, which is then running. In auto mode a kernel or
    /// platform that refuses the filter means the shim, with a warning; `--interpose seccomp` fails instead.
    static func launch(
        _ configuration: NodeConfiguration, environment: [String: String], links: LinkManager, names: MeshNames,
        logger: Logger
    ) throws(LaunchError) -> (AppProcess, SeccompSupervisor?) {
        let program = configuration.command.first ?? ""
        let choice = Interposition.choose(configuration.interpose, command: program, path: environment["PATH"])
        if choice.supervised {
            let refusal: String
            if let lacking = Interposition.kernelLacks() {
                refusal = lacking
            } else {
                do throws(SupervisedLaunchError) {
                    let (app, listener) = try AppProcess.supervised(
                        arguments: configuration.command, environment: environment, output: configuration.appOutput)
                    let dns: DNSResponder?
                    do throws(SocketError) { dns = try DNSResponder(names: names, logger: logger) } catch {
                        logger.warning("\(error); the app's DNS queries for mesh names go unanswered (its /etc/hosts still has them)")
                        dns = nil
                    }
                    let supervisor = SeccompSupervisor(listener: listener, links: links, hosts: names.hosts, dns: dns, logger: logger)
                    supervisor.start()
                    logger.notice("the app runs under the seccomp supervisor: \(choice.reason)")
                    return (app, supervisor)
                } catch {
                    switch error {
                    case .launch(let failure): throw failure
                    case .filterRefused(let why): refusal = why
                    }
                }
            }
            guard configuration.interpose == .auto else {
                throw LaunchError(program: program, code: EPERM, reason: "the seccomp supervisor cannot run here: \(refusal)")
            }
            logger.warning("\(choice.reason), but the seccomp supervisor cannot run here (\(refusal)); trying the preload shim, which such a program bypasses")
        }
        var environment = environment
        if let shim = configuration.shim {
            environment["LD_PRELOAD"] = ([shim] + (environment["LD_PRELOAD"].map { [$0] } ?? [])).joined(separator: " ")
            if !choice.supervised { logger.notice("the app gets the preload shim: \(choice.reason)") }
        } else {
            logger.notice("no preload shim: the app runs, but cannot reach mesh names and addresses by itself")
        }
        return (try AppProcess(arguments: configuration.command, environment: environment, output: configuration.appOutput), nil)
    }
}
