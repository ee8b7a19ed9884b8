import BlockExport

/// The exports a server offers, by name. The default name "" reaches the only export when there
/// is exactly one, as with qemu-nbd and nbdkit, so `nbd+unix:///?socket=…` just works.
public struct NBDExportRegistry: Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let export: any BlockExport
    }

    public let entries: [Entry]

    public init(_ exports: [(name: String, export: any BlockExport)]) {
        entries = exports.map { Entry(name: $0.name, export: $0.export) }
    }

    /// The export a client asked for by name, if any.
    public func lookup(_ name: String) -> Entry? {
        if let entry = entries.first(where: { $0.name == name }) { return entry }
        if name.isEmpty && entries.count == 1 { return entries[0] }
        return nil
    }
}

extension ExportCapabilities {
    /// The NBD transmission flags for an export with these capabilities.
    func transmissionFlags(structuredReplies: Bool) -> NBDTransmissionFlags {
        var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendCache]
        if isReadOnly { flags.insert(.readOnly) }
        if canTrim && !isReadOnly { flags.insert(.sendTrim) }
        if canWriteZeroes && !isReadOnly {
            flags.insert(.sendWriteZeroes)
            if canFastZero { flags.insert(.sendFastZero) }
        }
        if canMultiConnect { flags.insert(.canMultiConn) }
        if isRotational { flags.insert(.rotational) }
        if structuredReplies { flags.insert(.sendDF) }
        return flags
    }
}

extension BlockExportError.Kind {
    /// The NBD error number for this kind of failure.
    var nbdError: NBDErrorCode {
        switch self {
        case .io: return .io
        case .noSpace: return .noSpace
        case .invalid: return .invalid
        case .notSupported: return .notSupported
        case .readOnly: return .permission
        case .overflow: return .overflow
        case .shuttingDown: return .shutdown
        }
    }
}
