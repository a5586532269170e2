import WireFormat

extension Reflector {
    /// What to do with one incoming message.
    enum Answer: Equatable {
        /// Send these bytes back.
        case reply(STUNMessage)
        /// Send nothing; the reason goes to the (rate-limited) log.
        case drop(String)
    }

    /// Decides the answer to the bytes of one message from `peer`. Pure: no sockets, so it is tested directly.
    ///
    /// - A Binding request gets a success response carrying the peer's address as XOR-MAPPED-ADDRESS and
    ///   MAPPED-ADDRESS (old clients read either), SOFTWARE, and FINGERPRINT if the request had one.
    /// - A classic RFC 3489 request (no magic cookie) gets MAPPED-ADDRESS only, with its cookie word echoed, as
    ///   RFC 8489 §12 asks: such clients reject the unknown XOR-MAPPED-ADDRESS (and Debian's `stun` 0.97 also
    ///   rejects a SOFTWARE whose length is not a multiple of 4).
    /// - A request of another method gets 400; one with unknown comprehension-required attributes, or with
    ///   CHANGE-REQUEST flags (this reflector has no alternate address), gets 420 with UNKNOWN-ATTRIBUTES.
    /// - Anything else (not STUN, malformed, a response or indication) is dropped.
    ///
    /// `allowingClassicRFC3489` is for UDP only: RFC 3489 had no TCP, so over TCP a wrong cookie is bad input.
    static func answer(
        to bytes: some Collection<UInt8>, from peer: Endpoint, software: String, allowingClassicRFC3489: Bool = true
    ) -> Answer {
        let request: STUNMessage
        do {
            request = try STUNMessage(parsing: bytes, allowingClassicRFC3489: allowingClassicRFC3489)
        } catch {
            return .drop("\(error) from \(peer)")
        }
        return answer(to: request, from: peer, software: software)
    }

    /// Decides the answer to a parsed message from `peer` (the rules are on the byte-level overload).
    static func answer(to request: STUNMessage, from peer: Endpoint, software: String) -> Answer {
        guard request.type.messageClass == .request else {
            return .drop("STUN \(request.type) from \(peer) is not a request")
        }
        var response = STUNMessage(
            type: STUNMessageType(method: request.type.method, messageClass: .errorResponse),
            transactionID: request.transactionID,
            includesFingerprint: request.includesFingerprint && !request.isClassicRFC3489
        )
        response.cookie = request.cookie
        guard request.type.method == .binding else {
            response.attributes = [
                .errorCode(STUNErrorCode(code: 400, reason: "Bad Request: only Binding is served")),
                .software(software),
            ]
            return .reply(response)
        }
        var unknown = request.unknownComprehensionRequiredTypes
        for case .changeRequest(let changeIP, let changePort) in request.attributes where changeIP || changePort {
            unknown.append(.changeRequest)  // no alternate address to answer from
            break
        }
        guard unknown.isEmpty else {
            response.attributes = [.errorCode(.unknownAttribute), .unknownAttributes(unknown), .software(software)]
            return .reply(response)
        }
        response.type = .bindingSuccess
        if request.isClassicRFC3489 {
            // No SOFTWARE either: RFC 3489 clients read 0x8022 as SERVER-NAME and reject lengths not a multiple of 4.
            response.attributes = [.mappedAddress(peer)]
        } else {
            response.attributes = [.xorMappedAddress(peer), .mappedAddress(peer), .software(software)]
        }
        return .reply(response)
    }
}
