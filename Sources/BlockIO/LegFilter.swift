/// A leg stacked on another, as nbdkit stacks filters on a plugin: every requirement of `Leg`
/// forwards to `next` by default, so a filter implements only what it changes.
public protocol LegFilter: Leg {
    /// The leg this one forwards to.
    var next: any Leg { get }
}

extension LegFilter {
    public var path: String { next.path }
    public var size: UInt64 { next.size }
    public var alignment: Int { next.alignment }
    public var requiredAlignment: Int { next.requiredAlignment }
    public var identity: LegIdentity { next.identity }
    public func writeTrace() -> LegWriteTrace { next.writeTrace() }
    public func replacement() -> String? { next.replacement() }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        next.read(into: buffer, count: count, offset: offset, completion: completion)
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool,
                      completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        next.write(from: buffer, count: count, offset: offset, durable: durable, completion: completion)
    }

    public func flush(completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) { next.flush(completion: completion) }
    public func flushNow() throws(BlockIOError) { try next.flushNow() }

    public func discard(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        next.discard(offset: offset, length: length, completion: completion)
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                            completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        next.writeZeroes(offset: offset, length: length, mayDeallocate: mayDeallocate, fastOnly: fastOnly, completion: completion)
    }

    public func prefetch(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        next.prefetch(offset: offset, length: length, completion: completion)
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [BlockDevice.Extent] {
        try next.allocationMap(offset: offset, length: length, maxExtents: maxExtents)
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                              completion: @escaping @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void) {
        next.allocationMap(offset: offset, length: length, maxExtents: maxExtents, completion: completion)
    }

    public func close() { next.close() }
}
