/// What one connection holds, counted the way the limits need it: a request counts from the
/// moment its header is admitted until its reply has been written to the socket, so replies a
/// client does not read stay within the same bounds as requests the disk is still working on.
///
/// Replies are released in batches: each flush writes a marker whose completion releases every
/// reply queued before it (a socket writes in order).
struct NBDConnectionLoad: Sendable {
    /// Requests and their payload bytes.
    struct Batch: Sendable, Equatable {
        var requests = 0
        var bytes = 0
    }

    let maximumRequests: Int
    let maximumBytes: Int
    /// Admitted requests whose reply has not been written yet.
    private(set) var held = Batch()
    /// Of those, the ones the export is working on.
    private(set) var atExport = 0
    /// Replies queued since the last flush marker.
    private var unflushed = Batch()

    init(maximumRequests: Int, maximumBytes: Int) {
        self.maximumRequests = maximumRequests
        self.maximumBytes = maximumBytes
    }

    /// Whether a request of `cost` payload bytes fits now. With nothing held, any request fits.
    func fits(_ cost: Int) -> Bool {
        held.requests < maximumRequests && (held.bytes == 0 || held.bytes + cost <= maximumBytes)
    }

    mutating func admit(_ cost: Int) {
        held.requests += 1
        held.bytes += cost
    }

    mutating func dispatched() { atExport += 1 }
    mutating func completed() { atExport -= 1 }

    /// A reply (for a request of `cost` bytes) was written to the channel.
    mutating func replyQueued(cost: Int) {
        unflushed.requests += 1
        unflushed.bytes += cost
    }

    /// The replies a flush marker is to release, nil if none were queued since the last one.
    mutating func takeUnflushed() -> Batch? {
        guard unflushed.requests > 0 else { return nil }
        defer { unflushed = Batch() }
        return unflushed
    }

    /// Forgets requests whose replies were written (or will never be).
    mutating func release(_ batch: Batch) {
        held.requests -= batch.requests
        held.bytes -= batch.bytes
    }

    /// Whether admitted requests are neither at the export nor answered on the wire: their
    /// payload or their reply waits for the client.
    var waitsForClient: Bool { held.requests > atExport }
}
