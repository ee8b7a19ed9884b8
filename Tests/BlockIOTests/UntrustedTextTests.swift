import Testing
@testable import BlockIO

/// What an outside party can put in a log line through `UntrustedText`: nothing that forges a line,
/// moves a terminal's cursor, hides text or fills the log.
@Suite struct UntrustedTextTests {
    @Test func plainTextPassesUnchanged() {
        #expect(UntrustedText.escape("vm1-disk_0.img") == "vm1-disk_0.img")
        #expect(UntrustedText.escape("été 日本 🙂") == "été 日本 🙂")
    }

    @Test func lineBreaksControlsAndQuotesAreEscaped() {
        #expect(UntrustedText.escape("a\nlevel=error forged") == "a\\nlevel=error forged")
        #expect(UntrustedText.escape("\u{1b}[2J\r\t\u{7f}\0") == "\\x1b[2J\\r\\t\\x7f\\x00")
        #expect(UntrustedText.escape("say \"hi\" \\ bye") == "say \\\"hi\\\" \\\\ bye")
    }

    @Test func c1ControlsSeparatorsAndBidiOverridesAreEscaped() {
        #expect(UntrustedText.escape("\u{85}\u{9b}") == "\\u{85}\\u{9b}")
        #expect(UntrustedText.escape("x\u{2028}y\u{202e}z\u{2066}\u{feff}") == "x\\u{2028}y\\u{202e}z\\u{2066}\\u{feff}")
    }

    @Test func invalidUTF8IsShownByteByByte() {
        // A lone continuation byte, an overlong '/', a surrogate, a sequence cut short, a byte never valid.
        #expect(UntrustedText.escape(bytes: [0x41, 0x80, 0x42]) == "A\\x80B")
        #expect(UntrustedText.escape(bytes: [0xC0, 0xAF]) == "\\xc0\\xaf")
        #expect(UntrustedText.escape(bytes: [0xED, 0xA0, 0x80]) == "\\xed\\xa0\\x80")
        #expect(UntrustedText.escape(bytes: [0xE6, 0x97]) == "\\xe6\\x97")
        #expect(UntrustedText.escape(bytes: [0xFF]) == "\\xff")
        #expect(UntrustedText.escape(bytes: [0xF4, 0x90, 0x80, 0x80]) == "\\xf4\\x90\\x80\\x80")
    }

    @Test func longInputIsCutOnACharacterBoundaryAndSaysHowLongItWas() {
        let long = String(repeating: "é", count: 3000)  // 6000 bytes of two-byte characters
        let escaped = UntrustedText.escape(long, limit: 101)
        #expect(escaped == String(repeating: "é", count: 50) + "…(6000 bytes)")
        let escapes = String(repeating: "\n", count: 1000)
        #expect(UntrustedText.escape(escapes, limit: 10) == String(repeating: "\\n", count: 5) + "…(1000 bytes)")
    }
}
