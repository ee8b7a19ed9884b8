// swift-tools-version:6.1
// libFuzzer targets for BlockMirror's parsers of untrusted bytes, kept apart from the main package
// (like Benchmarks/) so that its build and tests never carry sanitizer flags. Build and run them
// with tools/fuzz.sh (it passes the sanitizer flags and -enable-testing, which the `@testable`
// imports need); Fuzz/README.md says what each target fuzzes. Corpora: Fuzz/Corpus/<target>/.
import PackageDescription

/// A product of the main package.
func blockMirror(_ name: String) -> Target.Dependency { .product(name: name, package: "BlockMirror") }
/// A product of swift-nio.
func nio(_ name: String) -> Target.Dependency { .product(name: name, package: "swift-nio") }

/// A fuzz target: an executable whose `LLVMFuzzerTestOneInput` libFuzzer's `main` calls.
func fuzzTarget(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .executableTarget(name: name, dependencies: ["FuzzSupport"] + dependencies)
}

let package = Package(
    name: "BlockMirrorFuzz",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "BlockMirror", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        /// What every target shares: the checks that stop a run, a log handler that checks each line.
        .target(name: "FuzzSupport", dependencies: [blockMirror("BlockIO"), .product(name: "Logging", package: "swift-log")]),
        /// One NBD connection on an EmbeddedChannel, served from an export in memory; the protocol check.
        .target(name: "NBDFuzzHarness", dependencies: ["FuzzSupport", blockMirror("NBD"), blockMirror("BlockExport"),
                                                       nio("NIOCore"), nio("NIOEmbedded"), nio("NIOTLS")]),
        fuzzTarget("fuzz-nbd-handshake", ["NBDFuzzHarness", blockMirror("NBD"), nio("NIOCore")]),
        fuzzTarget("fuzz-nbd-transmission", ["NBDFuzzHarness", blockMirror("NBD"), blockMirror("BlockExport"), nio("NIOCore")]),
        fuzzTarget("fuzz-control", [blockMirror("Control"), blockMirror("BlockIO"), nio("NIOCore"), nio("NIOEmbedded")]),
        fuzzTarget("fuzz-bitmap", [blockMirror("Mirror"), blockMirror("BlockIO")]),
    ]
)
