/// How a leg's request becomes NBD requests a remote export accepts (its INFO_BLOCK_SIZE): every
/// piece starts and ends on the remote's minimum block size, and carries at most its maximum
/// payload (READ, WRITE) or `maximumRange` bytes (the commands without a payload). A pure value, so
/// the rules are tested alone.
public struct NBDRequestSplit: Sendable, Equatable {
    /// The remote's minimum block size: offsets and lengths must be multiples of it.
    public let minimum: UInt32
    /// The largest READ or WRITE payload, a multiple of `minimum`.
    public let maximumPayload: UInt32
    /// The largest TRIM, WRITE_ZEROES, CACHE or BLOCK_STATUS length, a multiple of `minimum`.
    public let maximumRange: UInt32

    /// The limits of an export that sent `blockSizes`; without them the NBD spec's defaults
    /// (minimum 1, and 32 MiB payloads, which every server accepts).
    public init(blockSizes: (minimum: UInt32, preferred: UInt32, maximum: UInt32)?) {
        let minimum = max(1, blockSizes?.minimum ?? 1)
        let payload = min(blockSizes?.maximum ?? Self.defaultMaximumPayload, Self.defaultMaximumPayload)
        self.minimum = minimum
        maximumPayload = max(minimum, payload / minimum * minimum)
        maximumRange = max(minimum, Self.largestRange / minimum * minimum)
    }

    /// 32 MiB: the payload the NBD spec says a client may assume when the server names none.
    public static let defaultMaximumPayload: UInt32 = 32 << 20
    /// 1 GiB: the longest request without a payload sent (a 32-bit length, kept well below its
    /// limit so one request never ties a server up for long).
    public static let largestRange: UInt32 = 1 << 30

    /// Why `[offset, offset + length)` cannot be sent to the remote, or nil if it can: the NBD
    /// spec lets a server refuse requests off its minimum block size, so the leg never sends one.
    public func misalignment(offset: UInt64, length: UInt64) -> String? {
        let unit = UInt64(minimum)
        guard offset % unit != 0 || length % unit != 0 else { return nil }
        return "offset \(offset) length \(length) is not a multiple of the export's \(minimum)-byte minimum block size"
    }

    /// The pieces of `[offset, offset + length)`, in order, each at most `step` bytes long (the
    /// split's `maximumPayload` for READ and WRITE, `maximumRange` for the others), all but the
    /// last exactly that long. Empty when `length` is 0.
    public static func pieces(offset: UInt64, length: UInt64, step: UInt32) -> [(offset: UInt64, length: UInt32)] {
        let step = UInt64(max(1, step))
        var pieces: [(offset: UInt64, length: UInt32)] = []
        pieces.reserveCapacity(Int(min(length / step + 1, 1 << 20)))
        var at: UInt64 = 0
        while at < length {
            let piece = min(step, length - at)
            pieces.append((offset + at, UInt32(piece)))
            at += piece
        }
        return pieces
    }
}
