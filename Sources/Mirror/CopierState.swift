/// The copier's bookkeeping, with no I/O and no lock: which dirty region to copy next, how many
/// copies run, when the copy waits, when a lazy bitmap save is due. `MirrorExport` keeps it under
/// its mutex beside the bitmap and runs the steps it returns (`pump`).
struct CopierState: Sendable, Equatable {
    /// Copied regions between two lazy saves of the bitmap.
    static let regionsPerSave = 256

    /// Where the next search for a dirty region starts: regions are copied in order, wrapping round.
    private(set) var cursor = 0
    /// Copies running.
    private(set) var copying = 0
    /// Bytes written onto targets by copies.
    private(set) var bytesCopied: UInt64 = 0
    /// A delayed pump is scheduled (the speed limit holds the copy back, or a source read failed):
    /// no copy starts before it `resume`s.
    private(set) var delayed = false
    /// Regions copies cleaned since the last save they asked for.
    private var cleanedSinceSave = 0

    /// What the copier does next.
    enum Step: Sendable, Equatable {
        /// Copy this region (counted running until `finished`).
        case copy(Int)
        /// Nothing before this many nanoseconds (the speed limit); the copier is `delayed`.
        case wait(UInt64)
        /// Nothing to start now.
        case idle
    }

    /// The next step over `bitmap` for a copier that may run `depth` copies at once. Once a copy
    /// could start, `admit` (the speed limit) is asked for the region's bytes; a delay it returns
    /// makes the step a wait.
    mutating func next(in bitmap: RegionBitmap, depth: Int, admit: () -> UInt64?) -> Step {
        guard !delayed, bitmap.dirtyCount > copying, copying < depth else { return .idle }
        if let wait = admit() {
            delayed = true
            return .wait(wait)
        }
        guard let region = bitmap.nextDirty(from: cursor) ?? bitmap.nextDirty(from: 0) else { return .idle }
        cursor = region + 1
        copying += 1
        return .copy(region)
    }

    /// A new target: the copy starts again from the first region.
    mutating func restart() {
        cursor = 0
    }

    /// Holds the copy back (a source read failed and is to be tried later); false if a delayed
    /// pump is scheduled already.
    mutating func delay() -> Bool {
        guard !delayed else { return false }
        delayed = true
        return true
    }

    /// The delayed pump runs.
    mutating func resume() {
        delayed = false
    }

    /// A copy ended having written `bytes` and cleaned `cleaned` regions (its own, or a hole's
    /// run), `dirtyLeft` regions remaining. Returns whether a lazy save of the bitmap is due (every
    /// `regionsPerSave` cleaned regions, and when the last one is) and whether no copy runs now.
    mutating func finished(bytes: UInt64, cleaned: Int, dirtyLeft: Int) -> (saveDue: Bool, idle: Bool) {
        bytesCopied += bytes
        copying -= 1
        cleanedSinceSave += cleaned
        let saveDue = cleanedSinceSave >= Self.regionsPerSave || (cleaned > 0 && dirtyLeft == 0)
        if saveDue { cleanedSinceSave = 0 }
        return (saveDue, copying == 0)
    }
}
