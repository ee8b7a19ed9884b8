/// What a line the daemon logs or sends as an error message may hold, whatever a client sent
/// (invariant 9, `UntrustedText`): no control characters (C0, DEL, C1), no line or paragraph
/// separators, no bidirectional overrides or invisible characters, and a bounded length.
public enum SafeText {
    /// Longest line accepted: our own words around a few escaped values of at most
    /// `UntrustedText.defaultLimit` bytes each.
    public static let maximumLength = 4096

    /// Why `text` could not be shown as it is, or nil when it can.
    public static func problem(in text: String, limit: Int = maximumLength) -> String? {
        if text.utf8.count > limit { return "\(text.utf8.count) bytes long (limit \(limit))" }
        // Printable ASCII, by far the most lines, is safe: one comparison a byte (the check runs on
        // every line of every execution), the scalars looked at only otherwise.
        if text.utf8.withContiguousStorageIfAvailable({ $0.allSatisfy { $0 &- 0x20 < 0x5F } }) == true { return nil }
        for scalar in text.unicodeScalars where isUnsafe(scalar) {
            return "holds U+\(String(scalar.value, radix: 16, uppercase: true))"
        }
        return nil
    }

    private static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0..<0x20, 0x7F...0x9F, 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x2069, 0xFEFF: return true
        default: return false
        }
    }
}
