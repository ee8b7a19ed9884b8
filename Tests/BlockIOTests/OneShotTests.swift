import BlockIO
import Testing

@Suite struct OneShotTests {
    @Test func everyWaiterGetsTheFirstValueWhetherItWaitedBeforeOrAfter() async {
        let shot = OneShot<Int>()
        #expect(shot.value == nil)
        let early = (0..<50).map { _ in Task { await shot.wait() } }
        #expect(shot.fulfil(7))
        #expect(!shot.fulfil(8))
        for task in early { #expect(await task.value == 7) }
        #expect(await shot.wait() == 7)
        #expect(shot.value == 7)
    }

    @Test func racingFulfilsResumeEachWaiterExactlyOnce() async {
        for _ in 0..<200 {
            let shot = OneShot<Int>()
            let results = await withTaskGroup(of: Int?.self) { group in
                for _ in 0..<4 { group.addTask { await shot.wait() } }
                for value in 1...4 { group.addTask { shot.fulfil(value) ? value : nil } }
                return await group.reduce(into: [Int?]()) { $0.append($1) }
            }
            // One fulfil won, and each of the four waiters returned its value.
            let values = results.compactMap { $0 }
            #expect(values.count == 5)
            #expect(Set(values).count == 1)
        }
    }

    @Test func aVoidOneShotIsAGate() async {
        let gate = OneShot<Void>()
        let waiter = Task { await gate.wait() }
        #expect(gate.fulfil())
        await waiter.value
        #expect(!gate.fulfil())
    }
}
