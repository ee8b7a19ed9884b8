// swift-tools-version:6.1
// libFuzzer targets for BlockMirror's parsers of untrusted bytes, kept apart from the main package
// (like Benchmarks/) so that its build and tests never carry sanitizer flags. Build and run them
// with tools/fuzz.sh (it passes --sanitize fuzzer --sanitize address and -enable-testing, which the
// `@testable import`s below need). Corpora: Fuzz/Corpus/<target>/.
import PackageDescription

let package = Package(
    name: "BlockMirrorFuzz",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "BlockMirror", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
    ],
    targets: [
        /// What every target shares: the checks that stop a run, a log handler that checks each line.
        .target(
            name: "FuzzSupport",
            dependencies: [
                .product(name: "BlockIO", package: "BlockMirror"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        /// One NBD connection on an EmbeddedChannel, served from an export in memory.
        .target(
            name: "NBDFuzzHarness",
            dependencies: [
                "FuzzSupport",
                .product(name: "NBD", package: "BlockMirror"),
                .product(name: "BlockExport", package: "BlockMirror"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "fuzz-nbd-handshake",
            dependencies: ["NBDFuzzHarness", "FuzzSupport",
                           .product(name: "NBD", package: "BlockMirror"),
                           .product(name: "NIOCore", package: "swift-nio")]),
        .executableTarget(
            name: "fuzz-nbd-transmission",
            dependencies: ["NBDFuzzHarness", "FuzzSupport",
                           .product(name: "NBD", package: "BlockMirror"),
                           .product(name: "NIOCore", package: "swift-nio")]),
        .executableTarget(
            name: "fuzz-control",
            dependencies: ["FuzzSupport",
                           .product(name: "Control", package: "BlockMirror"),
                           .product(name: "BlockIO", package: "BlockMirror"),
                           .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOEmbedded", package: "swift-nio")]),
        .executableTarget(
            name: "fuzz-bitmap",
            dependencies: ["FuzzSupport",
                           .product(name: "Mirror", package: "BlockMirror"),
                           .product(name: "BlockIO", package: "BlockMirror")]),
    ]
)
