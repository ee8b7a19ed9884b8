import BlockIO
import struct Synchronization.Atomic
import Testing
@testable import Mirror

/// Region locks: writes share, the copier excludes, arrival order is kept, nothing deadlocks.
@Suite struct RegionLocksTests {
    final class Log: Sendable {
        let events = Mutex<[String]>([])
        func add(_ event: String) { events.withLock { $0.append(event) } }
        var all: [String] { events.withLock { $0 } }
    }

    /// Shared holders coexist; an exclusive request waits for all of them, then runs.
    @Test func copierWaitsForWritesInFlight() {
        let locks = RegionLocks(), log = Log()
        locks.lock(0..<2, .shared) { log.add("write A") }
        locks.lock(1..<3, .shared) { log.add("write B") }
        locks.lock(1..<2, .exclusive) { log.add("copy 1") }
        #expect(log.all == ["write A", "write B"])
        locks.unlock(0..<2, .shared)
        #expect(log.all == ["write A", "write B"])
        locks.unlock(1..<3, .shared)
        #expect(log.all == ["write A", "write B", "copy 1"])
        locks.unlock(1..<2, .exclusive)
        #expect(locks.busyRegions == 0)
    }

    /// A write arriving while the copier holds (or waits for) a region queues behind it: no stale
    /// copy can land after the write, and the copier is not starved by a stream of writes.
    @Test func writesQueueBehindTheCopier() {
        let locks = RegionLocks(), log = Log()
        locks.lock(5..<6, .shared) { log.add("write 1") }
        locks.lock(5..<6, .exclusive) { log.add("copy") }
        locks.lock(4..<7, .shared) { log.add("write 2") }
        #expect(log.all == ["write 1"])
        locks.unlock(5..<6, .shared)
        #expect(log.all == ["write 1", "copy"])
        locks.unlock(5..<6, .exclusive)
        #expect(log.all == ["write 1", "copy", "write 2"])
        locks.unlock(4..<7, .shared)
        #expect(locks.busyRegions == 0)
    }

    /// Many threads hammering overlapping ranges: every request is granted exactly once, an
    /// exclusive holder is always alone, and everything is released at the end.
    @Test func concurrentStressHasNoDeadlockAndExclusionHolds() async {
        final class Tally: Sendable {
            let holders = Mutex<[Int: (shared: Int, exclusive: Int)]>([:])
            let violations = Atomic<Int>(0)
            let granted = Atomic<Int>(0)
        }
        let locks = RegionLocks(), tally = Tally()
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var seed = UInt64(worker + 1)
                    for _ in 0..<2000 {
                        seed = seed &* 6364136223846793005 &+ 1442695040888963407
                        let start = Int(seed >> 60)
                        let exclusive = seed & 1 == 0
                        let range = exclusive ? start..<(start + 1) : start..<(start + 1 + Int((seed >> 40) & 3))
                        let mode: RegionLocks.Mode = exclusive ? .exclusive : .shared
                        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                            locks.lock(range, mode) {
                                tally.holders.withLock { table in
                                    for region in range {
                                        var entry = table[region] ?? (0, 0)
                                        if exclusive { entry.exclusive += 1 } else { entry.shared += 1 }
                                        if entry.exclusive > 1 || (entry.exclusive == 1 && entry.shared > 0) {
                                            tally.violations.add(1, ordering: .relaxed)
                                        }
                                        table[region] = entry
                                    }
                                }
                                tally.granted.add(1, ordering: .relaxed)
                                continuation.resume()
                            }
                        }
                        tally.holders.withLock { table in
                            for region in range {
                                if exclusive { table[region]!.exclusive -= 1 } else { table[region]!.shared -= 1 }
                            }
                        }
                        locks.unlock(range, mode)
                    }
                }
            }
        }
        #expect(tally.violations.load(ordering: .relaxed) == 0)
        #expect(tally.granted.load(ordering: .relaxed) == 8 * 2000)
        #expect(locks.busyRegions == 0)
    }
}
