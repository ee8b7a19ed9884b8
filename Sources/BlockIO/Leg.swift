/// What a mirror needs of one of its devices, OLD (the source) or NEW (the target): the I/O it
/// sends, what it tells the bitmap file about the device, and how it notices the device being
/// replaced. `BlockDevice` (a local file or block device through libaio) is the first conformer;
/// the mirror, its check and `verify` work on legs, so a leg served from elsewhere is one more.
///
/// Completions may run on any thread. Memory a read or write points at stays valid, and
/// untouched by the caller, until its completion has run. Errors are `BlockIOError`s naming the
/// leg (`path`), the operation and the offset.
public protocol Leg: AnyObject, Sendable {
    /// How the leg is named in messages (the path as given, or a URI).
    var path: String { get }
    /// Size in bytes.
    var size: UInt64 { get }
    /// Alignment of offsets, lengths and memory the leg serves best (its logical block size).
    var alignment: Int { get }
    /// The alignment every offset and length sent to the leg must have (an NBD server's minimum
    /// block size); 1 where any range is served (a local device goes buffered when unaligned).
    var requiredAlignment: Int { get }
    /// What the leg is, taken when it was opened: the bitmap header records it.
    var identity: LegIdentity { get }

    /// Evidence of writes since `identity` was taken, for a bitmap file to tell whether the leg
    /// was written outside the mirror while it was stopped.
    func writeTrace() -> LegWriteTrace
    /// Why `path` no longer names the leg in use (deleted, renamed, replaced), or nil while it does.
    func replacement() -> String?

    /// Reads `count` bytes at `offset` into `buffer`; end of the leg before `count` bytes is an error.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64,
              completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
    /// Writes `count` bytes from `buffer` at `offset`; with `durable` (NBD's FUA) they are on stable
    /// storage when the completion runs.
    func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool,
               completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
    /// Makes every completed write durable.
    func flush(completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
    /// `flush`, waiting on the calling thread (for the bitmap's serial queue, which must not
    /// clear a bit before both legs are durable).
    func flushNow() throws(BlockIOError)
    /// Discards a range (NBD's TRIM): it may read back as anything until written.
    func discard(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
    /// Makes a range read as zeroes, deallocating it where `mayDeallocate`; with `fastOnly`, fails
    /// rather than writing zeroes the slow way.
    func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
    /// Hints that a range will be read soon (NBD's CACHE).
    func prefetch(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
    /// Data and hole extents from `offset` (at most `maxExtents`); a leg that cannot tell reports data.
    func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [BlockDevice.Extent]
    /// `allocationMap` through a completion, for callers on an event loop: a leg whose map comes
    /// from elsewhere (an NBD server's BLOCK_STATUS) answers without blocking the caller's thread.
    /// By default the map is read on the calling thread.
    func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                       completion: @escaping @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void)
    /// Lets go of the file, device or connection once the I/O in flight on it completed, whoever
    /// still holds the leg: its path can be opened again (a lock released). I/O asked afterwards
    /// fails. Calling it again does nothing.
    func close()
}

extension Leg {
    public var requiredAlignment: Int { 1 }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                              completion: @escaping @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void) {
        completion(Result { () throws(BlockIOError) in try allocationMap(offset: offset, length: length, maxExtents: maxExtents) })
    }
}

extension BlockDevice: Leg {}
