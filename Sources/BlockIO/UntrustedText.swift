/// Bytes that came from outside the daemon — an export name a client sent, a control request, a
/// path an administrator typed — made safe to put in a log line or an error message.
///
/// Nothing outside may forge a log line, move a terminal's cursor or hide text: control characters
/// (C0, DEL, C1), line and paragraph separators and bidirectional overrides are escaped, as are
/// bytes that are not UTF-8, backslashes and double quotes (so a quoted value cannot end early).
/// The result is cut at `limit` bytes, saying how long the input was, so one client cannot fill the
/// log with one value.
public enum UntrustedText {
    /// Default longest escaped output, in bytes (before the note on truncation).
    public static let defaultLimit = 256

    /// `bytes` escaped and truncated.
    public static func escape<Bytes: Collection>(bytes: Bytes, limit: Int = defaultLimit) -> String where Bytes.Element == UInt8 {
        let input = Array(bytes)
        var output = ""
        var index = 0
        while index < input.count {
            let (piece, consumed) = Self.piece(input, at: index)
            if output.utf8.count + piece.utf8.count > limit {
                return output + "…(\(input.count) bytes)"
            }
            output += piece
            index += consumed
        }
        return output
    }

    /// `text` escaped and truncated (a Swift string is valid Unicode, but may hold any scalar).
    public static func escape(_ text: String, limit: Int = defaultLimit) -> String {
        escape(bytes: text.utf8, limit: limit)
    }

    /// The escaped form of the character or byte at `index`, and how many bytes it used.
    private static func piece(_ input: [UInt8], at index: Int) -> (String, Int) {
        let lead = input[index]
        switch lead {
        case UInt8(ascii: "\\"): return ("\\\\", 1)
        case UInt8(ascii: "\""): return ("\\\"", 1)
        case UInt8(ascii: "\n"): return ("\\n", 1)
        case UInt8(ascii: "\r"): return ("\\r", 1)
        case UInt8(ascii: "\t"): return ("\\t", 1)
        case 0x20..<0x7F: return (String(UnicodeScalar(lead)), 1)
        case 0..<0x20, 0x7F: return (hex(lead), 1)
        default: break
        }
        guard let (scalar, length) = decodeScalar(input, at: index) else { return (hex(lead), 1) }
        if isDangerous(scalar) { return ("\\u{\(String(scalar.value, radix: 16))}", length) }
        return (String(Character(scalar)), length)
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return "\\x\(digits[Int(byte >> 4)])\(digits[Int(byte & 15)])"
    }

    /// C1 controls, line/paragraph separators, bidi marks, overrides and isolates, and the BOM /
    /// zero-width characters that can hide text.
    private static func isDangerous(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x80...0x9F, 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x2069, 0xFEFF: return true
        default: return false
        }
    }

    /// A well-formed UTF-8 sequence of two to four bytes at `index` (no overlong forms, no
    /// surrogates, nothing past U+10FFFF), or nil.
    private static func decodeScalar(_ input: [UInt8], at index: Int) -> (Unicode.Scalar, Int)? {
        let lead = input[index]
        let length: Int
        var value: UInt32
        var lower: UInt8 = 0x80, upper: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: length = 2; value = UInt32(lead & 0x1F)
        case 0xE0: length = 3; value = 0; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3; value = UInt32(lead & 0x0F)
        case 0xED: length = 3; value = 0x0D; upper = 0x9F
        case 0xF0: length = 4; value = 0; lower = 0x90
        case 0xF1...0xF3: length = 4; value = UInt32(lead & 0x07)
        case 0xF4: length = 4; value = 4; upper = 0x8F
        default: return nil
        }
        guard index + length <= input.count else { return nil }
        for offset in 1..<length {
            let byte = input[index + offset]
            let (low, high) = offset == 1 ? (lower, upper) : (0x80, 0xBF)
            guard byte >= low && byte <= high else { return nil }
            value = value << 6 | UInt32(byte & 0x3F)
        }
        return Unicode.Scalar(value).map { ($0, length) }
    }
}
