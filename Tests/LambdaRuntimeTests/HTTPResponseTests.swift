import Testing

@testable import LambdaRuntime

/// Responses as an HTTP/1.1 server may send them: with a length, chunked, or ended by the connection closing.
@Suite struct HTTPResponseTests {
    func parse(_ text: String, atEnd: Bool = false) throws -> HTTPResponse? {
        try HTTPResponse.parse(Array(text.utf8), atEnd: atEnd)
    }

    @Test func contentLength() throws {
        let text = "HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: abc\r\nContent-Length: 5\r\n\r\nhello"
        let response = try #require(try parse(text))
        #expect(response.status == 200)
        #expect(response.header("lambda-runtime-aws-request-id") == "abc")
        #expect(response.body == Array("hello".utf8))
        #expect(try parse(String(text.dropLast())) == nil)  // one byte short: more to come
    }

    @Test func chunked() throws {
        let text = "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n"
        #expect(try parse(text)?.body == Array("Wikipedia ".utf8))
        #expect(try parse(String(text.prefix(60))) == nil)
    }

    @Test func untilClose() throws {
        #expect(try parse("HTTP/1.1 200 OK\r\n\r\nbody") == nil)
        #expect(try parse("HTTP/1.1 200 OK\r\n\r\nbody", atEnd: true)?.body == Array("body".utf8))
    }

    @Test(arguments: ["SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 abc\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n"])
    func malformed(text: String) {
        #expect(throws: HTTPError.self) { try parse(text) }
    }

    @Test func closedTooEarly() {
        #expect(throws: HTTPError.self) { try parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", atEnd: true) }
    }

    @Test func requestIDsStayOnePathSegment() {
        #expect(RuntimeAPI.pathSegment("8476a536-e9f4-11e8-9739-2dfe598c3fcd") == "8476a536-e9f4-11e8-9739-2dfe598c3fcd")
        #expect(RuntimeAPI.pathSegment("a/b c") == "a%2Fb%20c")
    }
}
