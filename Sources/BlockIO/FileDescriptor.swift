import CLibAIO
#if canImport(Glibc)
import Glibc
#endif

/// An open file descriptor with typed wrappers over the system calls BlockIO needs.
///
/// Like swift-system's `FileDescriptor`, it is a value that does not close itself: its owner
/// (`BlockDevice`) decides when. Every call returns a `Result` or throws an `Errno`, retrying `EINTR`.
public struct FileDescriptor: Sendable, Hashable {
    /// The raw descriptor number.
    public let rawValue: Int32

    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Opens `path` with the given flags (`O_CLOEXEC` is always added).
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) -> Result<FileDescriptor, Errno> {
        retryingOnInterrupt { Glibc.open(path, flags | O_CLOEXEC, mode) }.map(FileDescriptor.init(rawValue:))
    }

    /// Closes the descriptor. Errors from close are not actionable for a reader or writer that
    /// already synced, so they are returned but usually only logged.
    @discardableResult
    public func close() -> Result<Void, Errno> {
        Glibc.close(rawValue) == 0 ? .success(()) : .failure(.current)
    }

    /// `fstat(2)`.
    public func status() -> Result<stat, Errno> {
        var info = stat()
        return Glibc.fstat(rawValue, &info) == 0 ? .success(info) : .failure(.current)
    }

    /// Size in bytes of a block device (`BLKGETSIZE64`).
    public func blockDeviceSize() -> Result<UInt64, Errno> {
        var bytes: UInt64 = 0
        return bm_blkgetsize64(rawValue, &bytes) == 0 ? .success(bytes) : .failure(.current)
    }

    /// Logical sector size of a block device (`BLKSSZGET`).
    public func logicalBlockSize() -> Result<Int, Errno> {
        var bytes: Int32 = 0
        return bm_blksszget(rawValue, &bytes) == 0 ? .success(Int(bytes)) : .failure(.current)
    }

    /// Synchronous positional read; used for probes, not for the data path.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Result<Int, Errno> {
        retryingOnInterrupt { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Synchronous positional write of the whole buffer (loops on short writes).
    public func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) -> Result<Void, Errno> {
        var done = 0
        while done < buffer.count {
            let result = retryingOnInterrupt {
                Glibc.pwrite(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            switch result {
            case .success(let n) where n > 0: done += n
            case .success: return .failure(.ioError)
            case .failure(let error): return .failure(error)
            }
        }
        return .success(())
    }

    /// `fdatasync(2)`.
    public func dataSync() -> Result<Void, Errno> {
        retryingOnInterrupt { Glibc.fdatasync(rawValue) }.map { _ in () }
    }

    /// `fallocate(2)` with the given mode.
    public func allocate(mode: Int32, offset: UInt64, length: UInt64) -> Result<Void, Errno> {
        retryingOnInterrupt { bm_fallocate(rawValue, mode, offset, length) }.map { _ in () }
    }

    /// `BLKDISCARD` on a block device.
    public func discardBlocks(offset: UInt64, length: UInt64) -> Result<Void, Errno> {
        retryingOnInterrupt { bm_blkdiscard(rawValue, offset, length) }.map { _ in () }
    }

    /// `BLKZEROOUT` on a block device.
    public func zeroOutBlocks(offset: UInt64, length: UInt64) -> Result<Void, Errno> {
        retryingOnInterrupt { bm_blkzeroout(rawValue, offset, length) }.map { _ in () }
    }

    /// Where a seek for data or a hole starting at `offset` lands.
    public enum SeekTarget: Sendable { case data, hole }

    /// `lseek(2)` with `SEEK_DATA` / `SEEK_HOLE`. Returns nil at end of file (`ENXIO`).
    public func seek(_ target: SeekTarget, from offset: UInt64) -> Result<UInt64?, Errno> {
        let whence = target == .data ? bm_seek_data() : bm_seek_hole()
        let result = Glibc.lseek(rawValue, off_t(offset), whence)
        if result >= 0 { return .success(UInt64(result)) }
        let error = Errno.current
        return error.rawValue == ENXIO ? .success(nil) : .failure(error)
    }

    /// `posix_fadvise(POSIX_FADV_WILLNEED)`: asks the kernel to read a range ahead into its cache.
    public func adviseWillNeed(offset: UInt64, length: UInt64) -> Result<Void, Errno> {
        let rc = Glibc.posix_fadvise(rawValue, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
        return rc == 0 ? .success(()) : .failure(Errno(rawValue: rc))
    }

    /// Takes a non-blocking advisory lock on the whole file (`flock`), exclusive or shared.
    public func lock(exclusive: Bool) -> Result<Void, Errno> {
        retryingOnInterrupt { bm_flock(rawValue, exclusive ? 1 : 0) }.map { _ in () }
    }
}
