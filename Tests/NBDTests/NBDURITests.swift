import Testing
@testable import NBD

/// NBD URIs as the standard (doc/uri.md), libnbd and qemu spell them, and every way one can be
/// wrong, each with an error that names the URI.
@Suite struct NBDURITests {
    /// The export names of doc/uri.md's table, and the transports.
    @Test(arguments: [
        ("nbd://example.com/disk", "disk"),
        ("nbd+unix:///disk?socket=sock", "disk"),
        ("nbd://example.com/", ""),
        ("nbd://example.com", ""),
        ("nbd://example.com//disk", "/disk"),
        ("nbd://example.com/hello%20world", "hello world"),
        ("nbd://example.com/caf%C3%A9", "café"),
    ])
    func exportNamesAreThePathWithoutItsSlash(uri: String, name: String) throws {
        #expect(try NBDURI.parse(uri).exportName == name)
    }

    @Test func transportsAndTheirDefaults() throws {
        #expect(try NBDURI.parse("nbd://example.com/x").transport == .tcp(host: "example.com", port: 10809))
        #expect(try NBDURI.parse("nbd://EXAMPLE.com:10900/x").transport == .tcp(host: "example.com", port: 10900))
        #expect(try NBDURI.parse("nbd://192.0.2.7:1/x").transport == .tcp(host: "192.0.2.7", port: 1))
        #expect(try NBDURI.parse("nbd://[fd00::1]:65535/x").transport == .tcp(host: "fd00::1", port: 65535))
        #expect(try NBDURI.parse("nbd://[::1]/x").transport == .tcp(host: "::1", port: 10809))
        #expect(try NBDURI.parse("nbd+unix:///x?socket=/run/nbd%20a.sock").transport == .unix(path: "/run/nbd a.sock"))
        #expect(try NBDURI.parse("NBD+UNIX:///?socket=s").transport == .unix(path: "s"))
        #expect(try NBDURI.parse("nbd://h/x").tls == nil)
    }

    @Test func tlsSchemesAndTheirParameters() throws {
        #expect(try NBDURI.parse("nbds://h/x").tls == NBDURI.TLS(credentials: nil, username: nil))
        #expect(try NBDURI.parse("nbds://h/x?tls-certificates=/etc/pki/nbd").tls
                == NBDURI.TLS(credentials: .certificates(directory: "/etc/pki/nbd"), username: nil))
        #expect(try NBDURI.parse("nbds://alice@h/x?tls-psk-file=/k.psk").tls == NBDURI.TLS(credentials: .pskFile("/k.psk"), username: "alice"))
        #expect(try NBDURI.parse("nbds+unix:///x?socket=s&tls-psk-file=k&tls-username=bob").tls
                == NBDURI.TLS(credentials: .pskFile("k"), username: "bob"))
        #expect(try NBDURI.parse("nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs").tls
                == NBDURI.TLS(credentials: .certificates(directory: "certs"), username: "alice"))
    }

    /// What the server announces for its listeners parses back to the same place.
    @Test func theServersOwnURIsParseBack() throws {
        let unix = try NBDURI.parse(ListenAddress.unix(path: "/run/blockmirror/m0.sock").uri(exportName: "m 0"))
        #expect(unix.transport == .unix(path: "/run/blockmirror/m0.sock") && unix.exportName == "m 0")
        let tcp = try NBDURI.parse(ListenAddress.tcp(host: "::1", port: 10810).uri(exportName: "disk"))
        #expect(tcp.transport == .tcp(host: "::1", port: 10810) && tcp.exportName == "disk")
    }

    @Test func whatIsAURIAndWhatIsAPath() {
        #expect(NBDURI.isURI("nbd://h/x") && NBDURI.isURI("NBDS+unix:///?socket=s") && NBDURI.isURI("nbd:oops"))
        #expect(!NBDURI.isURI("/dev/sdb") && !NBDURI.isURI("new.img") && !NBDURI.isURI("file:/x") && !NBDURI.isURI("./nbd:x"))
    }

    /// Every kind of mistake is an error naming the URI and saying what is wrong.
    @Test(arguments: [
        ("nbd:/h/x", "must be followed by '//'"),
        ("nbdx://h/x", "unknown scheme 'nbdx'"),
        ("http://h/x", "unknown scheme 'http'"),
        ("nbd:///x", "no host"),
        ("nbd://h:0/x", "port '0'"),
        ("nbd://h:65536/x", "port '65536'"),
        ("nbd://h:/x", "port ''"),
        ("nbd://h:1x/x", "port '1x'"),
        ("nbd://[fd00::1/x", "not closed"),
        ("nbd://[zz]/x", "is not an IPv6 address"),
        ("nbd://[::1]x/x", "after the IPv6 address"),
        ("nbd://h/x y", "character ' ' at position 10 must be percent-encoded"),
        ("nbd://h/\u{7}", "character U+7 at position 9"),
        ("nbd://h/x#frag", "fragment"),
        ("nbd://h/%zz", "not followed by two hexadecimal digits"),
        ("nbd://h/%4", "not followed by two hexadecimal digits"),
        ("nbd://h/%00", "NUL"),
        ("nbd://h/%FF", "not valid UTF-8"),
        ("nbd://h/x?socket=s", "socket= is for nbd+unix"),
        ("nbd+unix:///x", "needs ?socket=PATH"),
        ("nbd+unix:///x?socket=", "needs ?socket=PATH"),
        ("nbd+unix://h/x?socket=s", "takes no host"),
        ("nbd+unix://:10809/x?socket=s", "takes no host"),
        ("nbd+unix:///x?socket=s&socket=t", "given twice"),
        ("nbd+unix:///x?socket=s&cache=none", "unknown query parameter 'cache'"),
        ("nbd+unix:///x?socket", "is not KEY=VALUE"),
        ("nbd+unix:///x?socket=s&", "is not KEY=VALUE"),
        ("nbd://h/x?tls-certificates=d", "need a TLS scheme"),
        ("nbd://alice@h/x", "need a TLS scheme"),
        ("nbds://h/x?tls-certificates=d&tls-psk-file=k", "give one"),
        ("nbds://alice@h/x?tls-username=bob", "differ"),
        ("nbds://h/x?tls-psk-file=", "names no file"),
        ("nbds://h/x?tls-certificates=", "names no directory"),
        ("nbds://@h/x", "user name is empty"),
    ])
    func mistakesAreNamed(uri: String, problem: String) {
        #expect {
            try NBDURI.parse(uri)
        } throws: { error in
            guard let error = error as? NBDURIError else { return false }
            return error.description.hasPrefix("bad NBD URI ") && error.description.contains(problem)
        }
    }

    /// A URI is shown with anything unprintable escaped, in messages as in logs.
    @Test func unprintableBytesAreEscapedInMessages() throws {
        let error = #expect(throws: NBDURIError.self) { try NBDURI.parse("nbd://h/\u{1B}[31m") }
        #expect(error?.description.contains("\u{1B}") == false)
        let long = "nbd://h/" + String(repeating: "a", count: 5000)
        let tooLong = #expect(throws: NBDURIError.self) { try NBDURI.parse(long) }
        #expect(tooLong?.problem.contains("longer than 4096 bytes") == true)
    }

    /// A remote leg is known by where its export is, however the URI spells it: the default port
    /// written out or not, TLS and its credentials or not; another export or socket differs.
    @Test func oneLocationForEverySpellingOfAnExport() throws {
        let same = ["nbd://h/x", "nbd://h:10809/x", "nbds://h/x?tls-psk-file=/k.psk", "nbds://alice@h:10809/x?tls-psk-file=/other.psk"]
        #expect(Set(try same.map { try NBDURI.parse($0).location }) == ["nbd://h:10809/x"])
        #expect(try NBDURI.parse("nbd://h/y").location != NBDURI.parse("nbd://h/x").location)
        #expect(try NBDURI.parse("nbd+unix:///x?socket=/a.sock").location == NBDURI.parse("nbds+unix:///x?socket=/a.sock&tls-certificates=/c").location)
        #expect(try NBDURI.parse("nbd+unix:///x?socket=/a.sock").location != NBDURI.parse("nbd+unix:///x?socket=/b.sock").location)
    }
}
