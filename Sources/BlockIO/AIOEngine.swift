#if canImport(Glibc)
import Glibc
#endif

/// The libaio contexts of a process: one per event-loop thread, plus a shared one for other threads.
///
/// A request submitted from a thread that registered its own context (`registerForCurrentThread`)
/// goes to that context, whose completions the same thread reaps through the context's eventfd: an
/// NBD request is then decoded, submitted, completed and answered on one thread, with no hop. Any
/// other thread (tests, a background copier) uses the shared context and its reaper thread.
public final class AIOEngine: Sendable {
    /// The context for threads without their own.
    public let shared: AIOContext
    private let key: pthread_key_t
    private let registered = Mutex<[AIOContext]>([])

    /// Creates the shared context (with a reaper thread).
    public init(depth: Int = 256) throws(Errno) {
        shared = try AIOContext(depth: depth, delivery: .reaperThread)
        var key = pthread_key_t()
        let rc = pthread_key_create(&key, nil)
        guard rc == 0 else { throw Errno(rawValue: rc) }
        self.key = key
    }

    deinit { pthread_key_delete(key) }

    /// Makes `context` the one used by requests submitted from the calling thread.
    public func registerForCurrentThread(_ context: AIOContext) {
        registered.withLock { $0.append(context) }  // keeps it alive as long as the engine
        pthread_setspecific(key, Unmanaged.passUnretained(context).toOpaque())
    }

    /// The context for the calling thread.
    @inline(__always)
    public var current: AIOContext {
        guard let raw = pthread_getspecific(key) else { return shared }
        return Unmanaged<AIOContext>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Waits for every context's requests to complete, then stops them. Threads that reap their own
    /// context must keep running until this returns.
    public func shutdown() {
        for context in registered.withLock({ $0 }) { context.shutdown() }
        shared.shutdown()
    }
}
