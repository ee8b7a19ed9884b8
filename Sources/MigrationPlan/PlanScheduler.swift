import Control

/// Which of a plan's volumes copy when: pure bookkeeping, no I/O (the plan's daemon runs what it
/// decides). Volumes start `starting`, become `waiting` once they serve, and copy in `order`,
/// at most `concurrency` at once; a copy that ends — in sync, failed, stopped — frees its slot.
public struct PlanScheduler: Sendable, Equatable {
    public typealias Phase = PlanStatus.Phase

    /// The volumes in the order their copies start.
    public let order: [String]
    public let concurrency: Int
    public private(set) var phases: [String: Phase]
    /// Why a volume failed.
    public private(set) var errors: [String: String] = [:]
    /// The most volumes that copied at once.
    public private(set) var peakCopying = 0

    public init(order: [String], concurrency: Int) {
        self.order = order
        self.concurrency = concurrency
        phases = Dictionary(uniqueKeysWithValues: order.map { ($0, .starting) })
    }

    public var copying: Int { phases.values.filter { $0 == .copying }.count }

    /// `volume` serves: it waits for a slot.
    public mutating func served(_ volume: String) {
        if phases[volume] == .starting { phases[volume] = .waiting }
    }

    /// The copies to start now, in order, up to the free slots: each is `copying` from here on.
    public mutating func next() -> [String] {
        var started: [String] = []
        for volume in order where phases[volume] == .waiting && copying < concurrency {
            phases[volume] = .copying
            started.append(volume)
        }
        peakCopying = max(peakCopying, copying)
        return started
    }

    /// `volume`'s copy ended with its target in sync.
    public mutating func inSync(_ volume: String) {
        guard phases[volume] != .stopped else { return }
        phases[volume] = .inSync
        errors[volume] = nil
    }

    /// `volume` could not start, or its copy ended without the target in sync.
    public mutating func failed(_ volume: String, _ error: String) {
        guard phases[volume] != .stopped else { return }
        phases[volume] = .failed
        errors[volume] = error
    }

    /// `volume` was stopped on its own: it no longer holds a slot.
    public mutating func stopped(_ volume: String) {
        phases[volume] = .stopped
    }

    /// True once no volume starts, waits or copies.
    public var settled: Bool { phases.values.allSatisfy { $0 == .inSync || $0 == .failed || $0 == .stopped } }
}
