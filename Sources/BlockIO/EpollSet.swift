import CLibAIO
#if canImport(Glibc)
import Glibc
#endif

/// A set of descriptors that can be asked, without blocking, whether any is readable: an epoll
/// instance of its own (`epoll_create1`), descriptors added level-triggered for `EPOLLIN`
/// (`epoll_ctl`), asked with a zero timeout (`epoll_wait`).
///
/// A busy-polling event loop (`LoopPoller`) keeps one beside the loop's own selector, holding the
/// sockets of its connections: between looks at its libaio ring it asks this set whether a client
/// sent something, and if so lets the loop read it at once instead of spinning on. A descriptor
/// leaves the set by itself when it is closed: the kernel drops an epoll entry with the last
/// reference to its open file, so the set never holds a descriptor number handed out again.
/// Used by one thread at a time.
public final class EpollSet: @unchecked Sendable {
    private let descriptor: Int32

    /// A new, empty set (`epoll_create1(EPOLL_CLOEXEC)`).
    public init() throws(Errno) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw Errno.current }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Adds `fd` to the set, readable meaning `EPOLLIN` (level-triggered). A number already in the
    /// set (the same descriptor added twice) is updated instead (`EPOLL_CTL_MOD`).
    @discardableResult
    public func watchReadable(_ fd: Int32) -> Result<Void, Errno> {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = fd
        if epoll_ctl(descriptor, EPOLL_CTL_ADD, fd, &event) == 0 { return .success(()) }
        guard errno == EEXIST else { return .failure(.current) }
        return epoll_ctl(descriptor, EPOLL_CTL_MOD, fd, &event) == 0 ? .success(()) : .failure(.current)
    }

    /// Whether any descriptor of the set is readable now (`epoll_wait` with a zero timeout).
    public var anyReadable: Bool {
        var event = epoll_event()
        return epoll_wait(descriptor, &event, 1, 0) > 0
    }
}
