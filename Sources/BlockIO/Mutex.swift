#if BLOCKMIRROR_TSAN_LOCKS
#if canImport(Glibc)
import Glibc
#endif

/// The lock every BlockMirror module uses, under its usual name. Normally Swift's own
/// `Synchronization.Mutex`. Built with `-DBLOCKMIRROR_TSAN_LOCKS` (tools/sanitize.sh thread), a
/// `pthread_mutex_t` with the same `withLock`: Swift's `Mutex` waits on futexes directly on Linux,
/// which ThreadSanitizer cannot see, so it would report every access such a lock guards as a race;
/// with a lock it sees, what it reports is real.
public typealias Mutex<Value> = PthreadMutex<Value>

/// A value behind a `pthread_mutex_t` (`pthread_mutex_lock`/`pthread_mutex_unlock`).
public final class PthreadMutex<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock.
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
#else
import Synchronization

/// The lock every BlockMirror module uses, under its usual name: Swift's `Synchronization.Mutex`
/// (see the `BLOCKMIRROR_TSAN_LOCKS` branch of this file for why it has a second form).
public typealias Mutex<Value: ~Copyable> = Synchronization.Mutex<Value>
#endif
