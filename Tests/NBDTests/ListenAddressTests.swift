import Testing
@testable import NBD

/// `--listen` parsing and the URIs printed for clients.
@Suite struct ListenAddressTests {
    /// unix: and tcp: forms, with IPv6 brackets, and their URIs.
    @Test func parsesAndFormatsURIs() throws {
        #expect(try ListenAddress(parsing: "unix:/run/x.sock") == .unix(path: "/run/x.sock"))
        #expect(try ListenAddress(parsing: "tcp:127.0.0.1:10809") == .tcp(host: "127.0.0.1", port: 10809))
        #expect(try ListenAddress(parsing: "tcp:[::1]:0") == .tcp(host: "::1", port: 0))
        #expect(ListenAddress.unix(path: "/s").uri(exportName: "") == "nbd+unix:///?socket=/s")
        #expect(ListenAddress.tcp(host: "::1", port: 5).uri(exportName: "a b") == "nbd://[::1]:5/a%20b")
    }

    /// Bad values are refused with a reason.
    @Test(arguments: ["", "unix:", "tcp:host", "tcp::80", "tcp:h:99999", "tcp:h:x", "http://x"])
    func refusesBadValues(_ value: String) {
        #expect(throws: ListenAddress.ParseError.self) { try ListenAddress(parsing: value) }
    }
}
