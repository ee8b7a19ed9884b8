import BlockExport

/// The rules a transmission request must pass before it reaches the export (docs/ARCHITECTURE.md,
/// "Error rules"), apart from the handler that serves it, as nbdkit's protocol.c validates before
/// it handles: no state of its own, so each rule is tested alone.
enum NBDRequestValidation {
    /// The error `request` gets without reaching the export of `negotiated`, or nil if it is served.
    /// DISC is the handler's own and never asked about.
    static func rejection(of request: NBDRequest, negotiated: NBDNegotiated) -> (error: NBDErrorCode, message: String)? {
        let export = negotiated.export
        guard NBDCommandFlags.known.isSuperset(of: request.flags) else {
            return (.invalid, "unknown command flags 0x\(String(request.flags.rawValue, radix: 16))")
        }
        let maximum = UInt64(export.capabilities.blockSizes.maximum)
        let command: ExportCommand
        switch request.command {
        case .read:
            if request.length > maximum {
                let error: NBDErrorCode = negotiated.structuredReplies && request.flags.contains(.dontFragment) ? .overflow : .invalid
                return (error, "read of \(request.length) bytes exceeds the maximum payload of \(maximum)")
            }
            command = .read
        case .write:
            if request.length > maximum {
                return (.invalid, "write of \(request.length) bytes exceeds the maximum payload of \(maximum)")
            }
            command = .write
        case .flush:
            return nil
        case .trim:
            command = .trim
        case .writeZeroes:
            if request.flags.contains(.fastZero) && !export.capabilities.canFastZero {
                return (.invalid, "FAST_ZERO is not offered by this export")
            }
            command = .writeZeroes
        case .cache:
            command = .cache
        case .blockStatus:
            guard negotiated.baseAllocationSelected else { return (.invalid, "BLOCK_STATUS without a metadata context") }
            guard request.length > 0 else { return (.invalid, "BLOCK_STATUS of length 0") }
            command = .blockStatus
        default:
            return (.invalid, "unsupported \(request.command)")
        }
        do throws(BlockExportError) {
            try export.checkRange(offset: request.offset, length: UInt64(request.length), for: command)
        } catch {
            return (error.kind.nbdError, error.message)
        }
        return nil
    }
}
