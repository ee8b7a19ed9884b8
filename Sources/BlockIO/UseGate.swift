import Synchronization

/// Counts the operations using a resource (a device's descriptors) and lets it be closed only when
/// none is left: `close()` marks it closed, and whoever ends the last use — or `close()` itself,
/// with none in flight — is told to release it, exactly once. Once closed, `begin()` refuses, so a
/// resource number freed by the close (a descriptor) is never used by a later operation.
///
/// One atomic: uses times 2, plus 1 once closed.
final class UseGate: Sendable {
    private let state = Atomic<Int>(0)

    /// Counts one use, or returns false once closed.
    func begin() -> Bool {
        var current = state.load(ordering: .relaxed)
        while current & 1 == 0 {
            let (exchanged, original) = state.weakCompareExchange(expected: current, desired: current + 2,
                                                                  successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Ends a use counted by `begin`; true if the caller must now release the resource (it was
    /// the last one after `close()`).
    func end() -> Bool {
        state.subtract(2, ordering: .acquiringAndReleasing).newValue == 1
    }

    /// Marks the resource closed; true if the caller must release it now (no use in flight, and
    /// not closed before).
    func close() -> Bool {
        state.bitwiseOr(1, ordering: .acquiringAndReleasing).oldValue == 0
    }

    /// Whether `close()` was called.
    var isClosed: Bool { state.load(ordering: .acquiring) & 1 == 1 }
}
