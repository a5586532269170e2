import Testing

@testable import MeshNode

@Suite("Latch: waiting a bounded time for a condition")
struct LatchTests {
    @Test("a waiter goes on when it opens; once open nobody waits; closed again, waiters time out")
    func openCloseTimeout() async {
        let latch = Latch()
        #expect(await latch.wait(timeout: .milliseconds(20)) == false)
        async let waited = latch.wait(timeout: .seconds(10))
        try? await Task.sleep(for: .milliseconds(20))
        let started = ContinuousClock.now
        latch.open()
        #expect(await waited)
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(await latch.wait(timeout: .zero))
        latch.close()
        #expect(!latch.isOpen)
        #expect(await latch.wait(timeout: .milliseconds(20)) == false)
    }
}
