import CLibAIO
import Foundation
import Logging

/// An open regular file or block device, ready for asynchronous I/O through libaio.
///
/// Opened with `O_DIRECT` where the filesystem allows (data goes straight between the disk and the
/// caller's aligned buffers, not through the page cache). Where `O_DIRECT` is refused (tmpfs) or the
/// size is not a multiple of the logical block size, it falls back to buffered I/O and logs a warning.
/// Requests that are not aligned go through a second, buffered descriptor of the same file; the kernel
/// keeps the two coherent (a direct read writes back dirty cached pages of its range first).
///
/// Files are locked with `flock` (exclusive when writable) and block devices opened with `O_EXCL`,
/// so a second BlockMirror cannot open the same device for writing. `close()` lets go of them (and
/// the lock) once the I/O in flight completed, whoever still holds the object.
public final class BlockDevice: Sendable {
    /// What the path refers to.
    public enum Kind: String, Sendable { case file, blockDevice = "block device" }

    /// The path as given.
    public let path: String
    public let kind: Kind
    /// Size in bytes (file size, or `BLKGETSIZE64`).
    public let size: UInt64
    /// Whether the data path bypasses the page cache.
    public let isDirect: Bool
    /// Alignment direct I/O needs (offset, length and memory): the logical block size.
    public let alignment: Int
    public let isReadOnly: Bool
    /// What the file or device is (inode, device number, the kernel's stable id), taken when it was
    /// opened: a bitmap file records it, and `replacement()` compares the path against it.
    public let identity: LegIdentity

    private let direct: FileDescriptor
    private let buffered: FileDescriptor
    private let aio: AIOEngine
    /// The operations using the descriptors: they are closed when the last one after `close()`
    /// ends, never under one, and a number freed by the close is never used by a later one.
    private let uses = UseGate()
    private static let blockingQueue = DispatchQueue(label: "blockmirror.blocking-io", attributes: .concurrent)

    private init(path: String, kind: Kind, size: UInt64, isDirect: Bool, alignment: Int, isReadOnly: Bool,
                 identity: LegIdentity, direct: FileDescriptor, buffered: FileDescriptor, aio: AIOEngine) {
        self.path = path; self.kind = kind; self.size = size; self.isDirect = isDirect
        self.alignment = alignment; self.isReadOnly = isReadOnly; self.identity = identity
        self.direct = direct; self.buffered = buffered; self.aio = aio
    }

    deinit {
        if !uses.isClosed { closeDescriptors() }
    }

    /// Closes the file or device: at once if no I/O is in flight on it, else when the last
    /// completes (before its completion runs). The lock goes with it, so the path can be opened
    /// again; I/O asked of it afterwards fails ("the device was closed"). Calling it again does
    /// nothing.
    public func close() {
        if uses.close() { closeDescriptors() }
    }

    private func closeDescriptors() {
        if direct != buffered { direct.close() }
        buffered.close()
    }

    /// Counts one operation on the descriptors, or returns false once the device is closed.
    private func beginUse() -> Bool { uses.begin() }

    /// Ends an operation counted by `beginUse`; the last one after `close()` closes the descriptors.
    private func endUse() {
        if uses.end() { closeDescriptors() }
    }

    /// Runs `body` with the descriptors open, or returns nil once the device is closed.
    private func whileOpen<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T? {
        guard beginUse() else { return nil }
        defer { endUse() }
        return try body()
    }

    /// The error of an operation asked of a closed device.
    private func closedError(_ op: BlockOperation, _ offset: UInt64?, _ length: UInt64?) -> BlockIOError {
        BlockIOError(path: path, operation: op, offset: offset, length: length, errno: .badDescriptor, detail: "the device was closed")
    }

    /// Runs an asynchronous operation counted as a use: `body` gets a completion that ends the use
    /// before passing the result on; on a closed device the completion gets `closedError` at once.
    private func inUse(_ op: BlockOperation, _ offset: UInt64?, _ length: UInt64?,
                       _ completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void,
                       _ body: (@escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) {
        guard beginUse() else { return completion(.failure(closedError(op, offset, length))) }
        body { [self] result in
            endUse()
            completion(result)
        }
    }

    /// Opens `path` for I/O through `aio` (each request uses the calling thread's context).
    ///
    /// - Throws: `BlockIOError` naming the path: missing, not a file or block device, permission
    ///   denied, or in use by another process (`EBUSY` / `EWOULDBLOCK`).
    public static func open(path: String, readOnly: Bool, aio: AIOEngine, logger: Logger) throws(BlockIOError) -> BlockDevice {
        func fail(_ op: BlockOperation, _ errno: Errno, _ detail: String? = nil) -> BlockIOError {
            BlockIOError(path: path, operation: op, errno: errno, detail: detail)
        }
        let access = readOnly ? O_RDONLY : O_RDWR
        let buffered: FileDescriptor
        switch FileDescriptor.open(path, flags: access) {
        case .success(let fd): buffered = fd
        case .failure(let error): throw fail(.open, error)
        }
        var keep = false
        defer { if !keep { buffered.close() } }

        let info: stat
        switch buffered.status() {
        case .success(let s): info = s
        case .failure(let error): throw fail(.stat, error)
        }
        let kind: Kind
        let size: UInt64
        var alignment = 512
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            kind = .file
            size = UInt64(info.st_size)
        case S_IFBLK:
            kind = .blockDevice
            switch buffered.blockDeviceSize() {
            case .success(let bytes): size = bytes
            case .failure(let error): throw fail(.stat, error, "BLKGETSIZE64")
            }
            if case .success(let bytes) = buffered.logicalBlockSize() { alignment = bytes }
        default:
            throw fail(.open, .invalidArgument, "not a regular file or block device")
        }

        // The direct descriptor carries the exclusivity: O_EXCL for devices, flock for files.
        let directFlags = access | bm_o_direct() | (kind == .blockDevice && !readOnly ? O_EXCL : 0)
        var direct: FileDescriptor? = nil
        switch FileDescriptor.open(path, flags: directFlags) {
        case .success(let fd):
            direct = fd
        case .failure(let error) where error == .busy:
            throw fail(.open, error, "device is in use (mounted, or opened exclusively by another program)")
        case .failure(let error) where error == .invalidArgument:
            logger.warning("O_DIRECT refused, using buffered I/O (page cache)", metadata: ["device": "\(path)"])
        case .failure(let error):
            throw fail(.open, error)
        }
        if kind == .file {
            let lockFD = direct ?? buffered
            if case .failure(let error) = lockFD.lock(exclusive: !readOnly) {
                direct?.close()
                throw fail(.lock, error, error == .tryAgain ? "file is in use by another program" : nil)
            }
        }
        if let fd = direct, kind == .file {
            alignment = Self.probeAlignment(fd)
        }
        if let fd = direct, size % UInt64(alignment) != 0 {
            logger.warning("size is not a multiple of the \(alignment)-byte block, using buffered I/O",
                           metadata: ["device": "\(path)", "size": "\(size)"])
            fd.close()
            direct = nil
            if kind == .file, case .failure(let error) = buffered.lock(exclusive: !readOnly) {
                throw fail(.lock, error, "file is in use by another program")
            }
        }
        let identity: LegIdentity
        switch LegIdentity.of(buffered, path: path) {
        case .success(let found): identity = found
        case .failure(let error):
            direct?.close()
            throw fail(.stat, error)
        }
        keep = true
        return BlockDevice(path: path, kind: kind, size: size, isDirect: direct != nil,
                           alignment: direct != nil ? alignment : 1, isReadOnly: readOnly, identity: identity,
                           direct: direct ?? buffered, buffered: buffered, aio: aio)
    }

    /// What shows writes to this leg now (change time, or the kernel's write counters); a bitmap
    /// file records it at a clean stop.
    public func writeTrace() -> LegWriteTrace {
        whileOpen { LegWriteTrace.of(buffered, size: currentSize() ?? size) } ?? LegWriteTrace(size: size)
    }

    /// The size the file or device has now (it may have changed under the mirror).
    private func currentSize() -> UInt64? {
        switch kind {
        case .file:
            guard case .success(let info) = buffered.status() else { return nil }
            return UInt64(info.st_size)
        case .blockDevice:
            guard case .success(let bytes) = buffered.blockDeviceSize() else { return nil }
            return bytes
        }
    }

    /// Why this leg is no longer what was opened, if it is not: the file was deleted or truncated,
    /// the device changed size, or the path now names another file or device (renamed and
    /// re-created, a loop device set up again). The mirror fails a target for which this gives a
    /// reason, at every bitmap save and at stop (invariant 8).
    public func replacement() -> String? {
        guard let why = whileOpen({ currentReplacement() }) else { return "\(path) was closed" }
        return why
    }

    private func currentReplacement() -> String? {
        if kind == .file, case .success(let info) = buffered.status() {
            if info.st_nlink == 0 { return "\(path) was deleted while in use" }
        }
        if let now = currentSize(), now < size { return "\(path) shrank from \(size) to \(now) bytes while in use" }
        if kind == .blockDevice, let now = currentSize(), now != size {
            return "\(path) changed size from \(size) to \(now) bytes while in use"
        }
        switch LegIdentity.probe(path) {
        case .failure(let errno):
            return "\(path) no longer names the \(kind.rawValue) in use (\(errno)): it was renamed or deleted"
        case .success(let named):
            if !named.sharesStorage(with: identity) || (kind == .blockDevice && named.stableID != identity.stableID) {
                return "\(path) now names another \(kind.rawValue) than the one in use (renamed and re-created, or set up again)"
            }
        }
        return nil
    }

    /// The smallest alignment O_DIRECT accepts on this file's filesystem: 512 if a 512-byte
    /// direct read at 0 works, else 4096.
    private static func probeAlignment(_ fd: FileDescriptor) -> Int {
        let probe = AlignedBuffer(capacity: 512)
        if case .failure(let error) = fd.read(into: UnsafeMutableRawBufferPointer(start: probe.baseAddress, count: 512), at: 0),
           error == .invalidArgument {
            return 4096
        }
        return 512
    }

    /// Whether a request can use the direct descriptor.
    @inline(__always)
    private func descriptor(for buffer: UnsafeRawPointer, count: Int, offset: UInt64) -> FileDescriptor {
        guard isDirect else { return buffered }
        let mask = alignment - 1
        let aligned = Int(truncatingIfNeeded: offset) & mask == 0 && count & mask == 0 && Int(bitPattern: buffer) & mask == 0
        return aligned ? direct : buffered
    }

    private func error(_ op: BlockOperation, _ offset: UInt64?, _ length: Int?, _ errno: Errno, _ detail: String? = nil) -> BlockIOError {
        BlockIOError(path: path, operation: op, offset: offset, length: length.map(UInt64.init), errno: errno, detail: detail)
    }

    /// Reads `count` bytes at `offset` into `buffer`. `completion` runs on the I/O thread.
    /// Short reads are continued; end of device before `count` bytes is an error.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        inUse(.read, offset, UInt64(count), completion) { completion in
            transfer(write: false, buffer: buffer, count: count, offset: offset, durable: false, done: 0, completion: completion)
        }
    }

    /// Writes `count` bytes from `buffer` at `offset`; with `durable`, the data is on stable storage
    /// when the completion runs (`RWF_DSYNC`, NBD's FUA).
    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool,
                      completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        inUse(.write, offset, UInt64(count), completion) { completion in
            transfer(write: true, buffer: UnsafeMutableRawPointer(mutating: buffer), count: count, offset: offset,
                     durable: durable, done: 0, completion: completion)
        }
    }

    private func transfer(write: Bool, buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, durable: Bool,
                          done: Int, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let start = buffer + done
        let remaining = count - done
        let at = offset + UInt64(done)
        let fd = descriptor(for: start, count: remaining, offset: at)
        let operation: AIOOperation = write
            ? .write(fd, buffer: start, count: remaining, offset: at, durable: durable)
            : .read(fd, buffer: start, count: remaining, offset: at)
        let bufferAddress = UInt(bitPattern: buffer)
        aio.current.submit(operation) { [self] result in
            switch result {
            case .success(let n) where n == remaining:
                completion(.success(()))
            case .success(let n) where n > 0:
                // Short transfer: continue where it stopped (possibly through the buffered descriptor).
                transfer(write: write, buffer: UnsafeMutableRawPointer(bitPattern: bufferAddress)!, count: count,
                         offset: offset, durable: durable, done: done + n, completion: completion)
            case .success:
                completion(.failure(error(write ? .write : .read, at, remaining, write ? .noSpace : .ioError,
                                          "unexpected end of \(kind.rawValue)")))
            case .failure(let errno):
                completion(.failure(error(write ? .write : .read, at, remaining, errno)))
            }
        }
    }

    /// Makes every completed write durable (`fdatasync`, through libaio).
    public func flush(completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        inUse(.fdatasync, nil, nil, completion) { completion in
            aio.current.submit(.fdatasync(direct)) { [self] result in
                switch result {
                case .success: completion(.success(()))
                case .failure(let errno) where errno == .invalidArgument || errno == .notSupported:
                    // A kernel or filesystem without asynchronous fsync: do it on a blocking thread.
                    Self.blockingQueue.async { [self] in
                        completion(direct.dataSync().mapError { error(.fdatasync, nil, nil, $0) })
                    }
                case .failure(let errno): completion(.failure(error(.fdatasync, nil, nil, errno)))
                }
            }
        }
    }

    /// Makes every completed write durable now, blocking the calling thread (`fdatasync`).
    public func flushNow() throws(BlockIOError) {
        guard let synced = whileOpen({ direct.dataSync() }) else { throw closedError(.fdatasync, nil, nil) }
        if case .failure(let errno) = synced { throw error(.fdatasync, nil, nil, errno) }
    }

    /// Discards a range (NBD TRIM): punches a hole in a file, `BLKDISCARD` on a device.
    /// Afterwards the range reads as zeroes on files; on devices its content is unspecified.
    public func discard(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        blocking(.discard, offset, length, completion) { [self] in
            kind == .file ? buffered.allocate(mode: bm_falloc_punch_hole(), offset: offset, length: length)
                          : buffered.discardBlocks(offset: offset, length: length)
        }
    }

    /// Writes zeroes over a range.
    ///
    /// - Parameters:
    ///   - mayDeallocate: the range may become a hole (NBD WRITE_ZEROES without NO_HOLE).
    ///   - fastOnly: fail with `EOPNOTSUPP` rather than fall back to writing zero buffers (FAST_ZERO).
    public func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                            completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        blocking(.zero, offset, length, completion) { [self] in
            let fast: Result<Void, Errno>
            switch kind {
            case .file:
                fast = buffered.allocate(mode: mayDeallocate ? bm_falloc_punch_hole() : bm_falloc_zero_range(),
                                         offset: offset, length: length)
            case .blockDevice:
                fast = fastOnly ? .failure(.notSupported) : buffered.zeroOutBlocks(offset: offset, length: length)
            }
            switch fast {
            case .success: return .success(())
            case .failure(let errno) where errno == .notSupported && !fastOnly:
                return writeZeroBuffers(offset: offset, length: length)
            case .failure(let errno): return .failure(errno)
            }
        }
    }

    /// The slow path of `writeZeroes`: plain writes of a zero buffer.
    private func writeZeroBuffers(offset: UInt64, length: UInt64) -> Result<Void, Errno> {
        let chunk = 1 << 20
        let zeroes = AlignedBuffer(capacity: chunk)
        zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        var at = offset
        while at < offset + length {
            let n = Int(min(UInt64(chunk), offset + length - at))
            if case .failure(let errno) = buffered.writeAll(UnsafeRawBufferPointer(start: zeroes.baseAddress, count: n), at: at) {
                return .failure(errno)
            }
            at += UInt64(n)
        }
        return .success(())
    }

    /// Hints that a range will be read soon (NBD CACHE). With direct I/O there is no server-side
    /// cache to fill, so only buffered devices pass the hint to the kernel.
    public func prefetch(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard !isDirect else { return completion(.success(())) }
        blocking(.read, offset, length, completion) { [self] in buffered.adviseWillNeed(offset: offset, length: length) }
    }

    /// One stretch of the device: allocated data or a hole (reads as zeroes).
    public struct Extent: Sendable, Equatable {
        public var length: UInt64
        public var isHole: Bool
        public init(length: UInt64, isHole: Bool) { self.length = length; self.isHole = isHole }
    }

    /// The allocation map of `[offset, offset+length)`, from `SEEK_DATA`/`SEEK_HOLE` on files;
    /// a block device reports everything as data. At most `maxExtents` extents are returned; they
    /// start at `offset` and cover at most `length` bytes.
    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [Extent] {
        guard let extents = try whileOpen({ () throws(BlockIOError) in try openAllocationMap(offset: offset, length: length, maxExtents: maxExtents) })
        else { throw closedError(.seek, offset, length) }
        return extents
    }

    /// The allocation map through a completion: a file's SEEK_DATA/SEEK_HOLE can wait on the
    /// filesystem, so they run on the blocking queue, never on the caller's thread (an event loop);
    /// a block device (everything data) answers at once.
    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                              completion: @escaping @Sendable (Result<[Extent], BlockIOError>) -> Void) {
        guard kind == .file else {
            return completion(Result { () throws(BlockIOError) in try allocationMap(offset: offset, length: length, maxExtents: maxExtents) })
        }
        Self.blockingQueue.async { [self] in
            completion(Result { () throws(BlockIOError) in try allocationMap(offset: offset, length: length, maxExtents: maxExtents) })
        }
    }

    private func openAllocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [Extent] {
        let end = offset >= size ? offset : offset + min(length, size - offset)
        guard kind == .file, offset < end else { return [Extent(length: end - offset, isHole: false)] }
        var extents: [Extent] = []
        var at = offset
        while at < end && extents.count < maxExtents {
            let dataStart: UInt64
            switch buffered.seek(.data, from: at) {
            case .success(let next): dataStart = min(next ?? end, end)
            case .failure(let errno) where errno == .invalidArgument || errno == .notSupported:
                return [Extent(length: end - offset, isHole: false)]
            case .failure(let errno): throw error(.seek, at, nil, errno)
            }
            if dataStart > at {
                extents.append(Extent(length: dataStart - at, isHole: true))
                at = dataStart
                continue
            }
            let holeStart: UInt64
            switch buffered.seek(.hole, from: at) {
            case .success(let next): holeStart = min(next ?? end, end)
            case .failure(let errno): throw error(.seek, at, nil, errno)
            }
            extents.append(Extent(length: max(holeStart, at + 1) - at, isHole: false))
            at = max(holeStart, at + 1)
        }
        return extents
    }

    private func blocking(_ op: BlockOperation, _ offset: UInt64?, _ length: UInt64?,
                          _ completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void,
                          _ body: @escaping @Sendable () -> Result<Void, Errno>) {
        inUse(op, offset, length, completion) { completion in
            Self.blockingQueue.async { [self] in
                completion(body().mapError { error(op, offset, length.map { Int($0) }, $0) })
            }
        }
    }
}
