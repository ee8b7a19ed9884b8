import NIOCore

/// The framing of one client connection's byte stream: its `NBDFrameDecoder`, run by NIO's
/// `NIOSingleStepByteToMessageProcessor` inside the handler that uses the messages — the
/// negotiation handler, then the transmission handler it hands this object to.
///
/// Not a `ByteToMessageHandler` in front of them: every message then crossed the pipeline as an
/// `NIOAny`, and `NBDClientMessage` is too large for its inline storage (a heap box and a dynamic
/// cast per request), through a generic handler the compiler does not specialise across modules.
/// perf put that at 0.6 µs of user time per 4k read, about 6% of `serve`'s random-read IOPS on
/// this 2-core machine. The bytes still cross the pipeline as `ByteBuffer`s, NIOAny's fast case.
///
/// A framing error leaves the stream out of step: nothing after it is ever decoded.
final class NBDConnectionFraming {
    /// What comes next in the stream; the negotiation switches it (transmission, STARTTLS).
    let decoder = NBDFrameDecoder()
    private let processor: NIOSingleStepByteToMessageProcessor<NBDFrameDecoder>
    private var broken = false

    init() {
        processor = NIOSingleStepByteToMessageProcessor(decoder)
    }

    /// Appends `bytes` to what is left of the stream and calls `receive` with every whole message
    /// in order. `receive` may switch the decoder: the next message is framed after it returns.
    /// Throws at a framing error, after the messages before it were received.
    func process(_ bytes: ByteBuffer, _ receive: (NBDClientMessage) -> Void) throws(NBDProtocolError) {
        guard !broken else { return }
        do {
            try processor.process(buffer: bytes, receive)
        } catch {
            broken = true
            // The decoder throws nothing else, and the processor has no size limit of its own.
            guard let error = error as? NBDProtocolError else { preconditionFailure("framing threw \(error)") }
            throw error
        }
    }
}
