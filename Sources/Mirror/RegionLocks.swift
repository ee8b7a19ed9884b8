import BlockIO

/// Reader-writer locks on regions, without blocking threads: a request's continuation runs when
/// every region it asked for is granted.
///
/// Foreground writes take their regions *shared* (many writes may proceed at once: NBD clients
/// order overlapping writes themselves); the background copier takes a region *exclusive*, so a
/// copy's read of the source and write of the target never interleave with a foreground write to
/// the same region — no stale copy can overwrite a newer write (invariant 3).
///
/// Each region grants in arrival order: once a request waits on a region, later requests queue
/// behind it, so neither writes nor the copier starve. Multi-region requests acquire in ascending
/// order, so two requests can never wait on each other.
public final class RegionLocks: Sendable {
    public enum Mode: Sendable { case shared, exclusive }

    private struct Waiter {
        var mode: Mode
        var request: Request
    }

    /// A request in progress: the regions still to acquire and what to run at the end.
    private final class Request: @unchecked Sendable {
        let regions: Range<Int>
        let mode: Mode
        var next: Int
        let granted: @Sendable () -> Void
        init(regions: Range<Int>, mode: Mode, granted: @escaping @Sendable () -> Void) {
            self.regions = regions; self.mode = mode; self.next = regions.lowerBound; self.granted = granted
        }
    }

    private struct Entry {
        var holders = 0
        var exclusive = false
        var waiters: [Waiter] = []
    }

    private let table = Mutex<[Int: Entry]>([:])

    public init() {}

    /// Acquires `regions` in `mode`; `granted` runs (possibly before this returns, on this thread,
    /// or later on the thread of the `unlock` that frees the last region) when all are held.
    public func lock(_ regions: Range<Int>, _ mode: Mode, granted: @escaping @Sendable () -> Void) {
        let request = Request(regions: regions, mode: mode, granted: granted)
        let done = table.withLock { advance(request, in: &$0) }
        if done { granted() }
    }

    /// Takes as many of `regions` exclusively as are free now (no holder, nobody waiting), from the
    /// first one on, without waiting: returns those taken, a prefix of `regions` (empty if the
    /// first is busy). The copier extends a copy over the regions after it this way, and leaves
    /// any region someone else holds or waits for to a copy of its own.
    public func lockFreePrefix(_ regions: Range<Int>) -> Range<Int> {
        table.withLock { table in
            var end = regions.lowerBound
            while end < regions.upperBound, table[end] == nil {
                Self.hold(end, .exclusive, in: &table)
                end += 1
            }
            return regions.lowerBound..<end
        }
    }

    /// Releases `regions` held in `mode`, granting waiters that can now proceed.
    public func unlock(_ regions: Range<Int>, _ mode: Mode) {
        var ready: [Request] = []
        table.withLock { table in
            for region in regions {
                guard var entry = table[region] else { preconditionFailure("unlock of unlocked region \(region)") }
                entry.holders -= 1
                if mode == .exclusive { entry.exclusive = false }
                table[region] = entry
                // Grant waiters at the head of the queue while compatible.
                while let first = table[region]?.waiters.first, Self.compatible(first.mode, with: table[region]!) {
                    table[region]!.waiters.removeFirst()
                    Self.hold(region, first.mode, in: &table)
                    first.request.next = region + 1
                    if advance(first.request, in: &table) { ready.append(first.request) }
                }
                if let entry = table[region], entry.holders == 0, entry.waiters.isEmpty { table[region] = nil }
            }
        }
        for request in ready { request.granted() }
    }

    /// Number of regions with holders or waiters (for tests and status).
    public var busyRegions: Int { table.withLock { $0.count } }

    private static func compatible(_ mode: Mode, with entry: Entry) -> Bool {
        mode == .shared ? !entry.exclusive : entry.holders == 0
    }

    private static func hold(_ region: Int, _ mode: Mode, in table: inout [Int: Entry]) {
        table[region, default: Entry()].holders += 1
        if mode == .exclusive { table[region]!.exclusive = true }
    }

    /// Acquires the request's remaining regions in order until one must wait; true when all held.
    private func advance(_ request: Request, in table: inout [Int: Entry]) -> Bool {
        while request.next < request.regions.upperBound {
            let region = request.next
            let entry = table[region] ?? Entry()
            if entry.waiters.isEmpty && Self.compatible(request.mode, with: entry) {
                Self.hold(region, request.mode, in: &table)
                request.next += 1
            } else {
                table[region, default: Entry()].waiters.append(Waiter(mode: request.mode, request: request))
                return false
            }
        }
        return true
    }
}
