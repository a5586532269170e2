import Logging

extension MeshSession {
    /// For tools (resolve, tap): connect, open a session, run `body`, and leave whatever `body` did.
    public static func withSession<T: Sendable>(
        _ join: JoinRequest, broker: BrokerAddress, connectTimeout: Duration, logger: Logger,
        _ body: (MeshSession) async throws -> T
    ) async throws -> T {
        try await ControlClient.withConnection(to: broker.controlEndpoint) { client in
            let session = try await open(join, client: client, connectTimeout: connectTimeout, logger: logger)
            let result: Result<T, any Error>
            do {
                result = .success(try await body(session))
            } catch {
                result = .failure(error)
            }
            await session.leave()
            return try result.get()
        }
    }
}
