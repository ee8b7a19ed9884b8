import BlockIO
import Foundation

/// A file of pre-shared keys in psktool's format, as GnuTLS, nbdkit and qemu read it: one
/// `NAME:HEXKEY` per line (blank lines, and a CR before the line end, allowed). Read the same by
/// the client (its user's key) and the server (every client's).
struct PSKFile {
    /// Why the file cannot be used; names it (escaped) and the line.
    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    /// Keys by identity.
    let keys: [String: [UInt8]]

    init(path: String) throws(Problem) {
        let file = UntrustedText.escape(path)
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw Problem(description: "cannot read the PSK file \(file)")
        }
        var keys: [String: [UInt8]] = [:]
        // Split on any line end: "\r\n" is one Character in Swift, which "\n" alone does not split.
        for (number, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !line.isEmpty else { continue }
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                  let key = Self.hex(line[line.index(after: colon)...]), !key.isEmpty else {
                throw Problem(description: "the PSK file \(file), line \(number + 1), is not NAME:HEXKEY")
            }
            keys[String(line[..<colon])] = key
        }
        guard !keys.isEmpty else { throw Problem(description: "the PSK file \(file) holds no key") }
        self.keys = keys
    }

    /// The bytes of an even-length hexadecimal string, nil if it is not one.
    private static func hex(_ text: Substring) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let byte = UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }
}
