import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A file a daemon writes in its runtime directory (its log, its pid file), opened so that a link
/// planted there never redirects the daemon's writes to a file of someone's choosing: created
/// with the given mode if absent, never through a symbolic link (`O_NOFOLLOW`), only if it is a
/// regular file of the effective user, and not inherited by children (`O_CLOEXEC`).
public enum PrivateFile {
    /// Opens `path` (`role` names it in errors: "log file") with `flags` (`O_WRONLY | O_APPEND`,
    /// say) plus `O_CREAT | O_NOFOLLOW | O_CLOEXEC`.
    public static func open(_ path: String, role: String, flags: Int32, mode: mode_t) throws(ControlError) -> FileDescriptor {
        // O_NONBLOCK: a FIFO planted under the name must not block the open; dropped right after.
        let fd: FileDescriptor
        switch FileDescriptor.open(path, flags: flags | O_CREAT | O_NOFOLLOW | O_NONBLOCK, mode: mode) {
        case .success(let opened): fd = opened
        case .failure(let error) where error.rawValue == ELOOP:
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)).map { " (to \(UntrustedText.escape($0)))" } ?? ""
            throw ControlError("refusing the \(role) \(path): it is a symbolic link\(target); remove it")
        case .failure(let error) where error.rawValue == ENXIO:
            throw ControlError("refusing the \(role) \(path): it is not a regular file; remove it")  // a FIFO nobody reads
        case .failure(let error):
            throw ControlError("cannot open the \(role) \(path): \(error.phrase)")
        }
        let info: stat
        switch fd.status() {
        case .success(let status): info = status
        case .failure(let error):
            fd.close()
            throw ControlError("cannot open the \(role) \(path): \(error.phrase)")
        }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_uid == geteuid() else {
            fd.close()
            let what = info.st_mode & S_IFMT == S_IFREG ? "it belongs to \(UserNames.describe(info.st_uid))" : "it is not a regular file"
            throw ControlError("refusing the \(role) \(path): \(what); remove it")
        }
        _ = fcntl(fd.rawValue, F_SETFL, fcntl(fd.rawValue, F_GETFL) & ~O_NONBLOCK)
        return fd
    }
}
