/// What the write-intent bitmap file holds and must hold, as a state with no I/O and no lock
/// (invariant 4: write intent before write). `MirrorExport` keeps it under its mutex beside the
/// dirty bitmap, so one lock covers both, and does the page writes and saves its transitions call
/// for, on its bitmap queue.
///
/// The rules: a modifying request's regions have their bits set on disk before any data moves and
/// keep them while it is in flight; a bit set for one request whose page write is still queued
/// makes the next request into that region wait for the write (or, if it failed, write it); a save
/// clears only the bits of regions that are clean, have no write in flight and none lately; a save
/// that fails, or one whose legs could not be made durable, leaves the file's bits as they were.
struct WriteIntentState: Sendable, Equatable {
    /// What the bitmap file holds (a superset of what may differ), counting page writes queued.
    private(set) var persisted: RegionBitmap
    /// Regions whose bit is set in `persisted` but whose page write is still queued (or failed).
    private(set) var queued = Set<Int>()
    /// Modifying requests in flight per region.
    private var active: [Int: Int] = [:]
    /// When each region recently written last had no write in flight (monotonic nanoseconds).
    private var lastWrite: [Int: UInt64] = [:]

    /// The state of a file that holds `persisted`.
    init(persisted: RegionBitmap) {
        self.persisted = persisted
    }

    /// A modifying request into `regions` starts; their bits stay set until it `end`s. Returns
    /// whether it must wait for page writes first (a bit it needs is not on disk yet).
    mutating func begin(_ regions: Range<Int>) -> Bool {
        var waits = false
        for region in regions {
            active[region, default: 0] += 1
            if persisted.setDirty(region) { queued.insert(region) }
            if queued.contains(region) { waits = true }
        }
        return waits
    }

    /// The request `begin` let into `regions` ended at `now`.
    mutating func end(_ regions: Range<Int>, at now: UInt64) {
        for region in regions {
            active[region]! -= 1
            if active[region] == 0 {
                active[region] = nil
                lastWrite[region] = now
            }
        }
    }

    /// Of `regions`, those whose page write a waiting request must make (still queued: behind it,
    /// the write queued before failed or was never made), and the bits to write them from.
    func owed(_ regions: Range<Int>) -> (regions: [Int], bits: RegionBitmap) {
        (regions.filter { queued.contains($0) }, persisted)
    }

    /// Sets `bits` ahead of the page writes that make them durable; returns the regions newly set,
    /// queued until they are `written`.
    mutating func queue(_ bits: RegionBitmap) -> Set<Int> {
        let new = bits.subtracting(persisted)
        persisted.formUnion(bits)
        var regions = Set<Int>()
        var next = new.nextDirty(from: 0)
        while let region = next {
            regions.insert(region)
            next = new.nextDirty(from: region + 1)
        }
        queued.formUnion(regions)
        return regions
    }

    /// Sets one region's bit (a check found the legs differ there); returns the bits to write if it
    /// was not set, the region queued until it is `written`.
    mutating func set(_ region: Int) -> RegionBitmap? {
        guard persisted.setDirty(region) else { return nil }
        queued.insert(region)
        return persisted
    }

    /// The page writes of `regions` are on disk.
    mutating func written(_ regions: some Sequence<Int>) {
        queued.subtract(regions)
    }

    /// What one save writes, and what the file held before it.
    struct Save: Sendable, Equatable {
        /// The bits the file is to hold.
        var bits: RegionBitmap
        /// The bits it held (or was queued to hold) before.
        var previous: RegionBitmap
        /// The regions queued when the save started: written by it.
        var queued: Set<Int>
        /// The save clears bits: both legs must be durable first.
        var clears: Bool { previous.hasBits(clearIn: bits) }
    }

    /// A save at `now` of a mirror whose regions `dirty` may differ: the file is to hold those,
    /// every region with a write in flight and, unless `final` (a clean stop), every region written
    /// within `holdNanos` (so random writes do not set and clear the same bits over and over). The
    /// bits it sets are queued like a request's. Nil when it would write nothing new.
    mutating func beginSave(dirty: RegionBitmap, now: UInt64, holdNanos: UInt64, final: Bool) -> Save? {
        var bits = dirty
        for region in active.keys { bits.setDirty(region) }
        // A write stamped after `now` was read is recent too.
        lastWrite = lastWrite.filter { $0.value > now || now - $0.value < holdNanos }
        if !final { for region in lastWrite.keys { bits.setDirty(region) } }
        let previous = persisted
        _ = queue(bits)
        persisted = bits
        guard bits != previous || final else { return nil }
        return Save(bits: bits, previous: previous, queued: queued)
    }

    /// A leg could not be made durable: the save clears nothing (it writes the bits the file held
    /// too).
    mutating func clearNothing(_ save: inout Save) {
        save.bits.formUnion(save.previous)
        persisted.formUnion(save.previous)
    }

    /// The save failed: the file may still hold the bits it held, and later page writes carry them.
    mutating func failed(_ save: Save) {
        persisted.formUnion(save.previous)
    }

    /// The save is on disk.
    mutating func saved(_ save: Save) {
        queued.subtract(save.queued)
    }
}
