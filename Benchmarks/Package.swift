// swift-tools-version:6.1
// Micro-benchmarks (ordo-one/benchmark), kept apart from the main package so that building and
// testing BlockMirror does not build the benchmark framework. Run from this directory:
//   swift package benchmark
import PackageDescription

let package = Package(
    name: "BlockMirrorBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "BlockMirror", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.0", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "NBDCodecBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "NBD", package: "BlockMirror"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/NBDCodecBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
        .executableTarget(
            name: "BlockIOBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "BlockIO", package: "BlockMirror"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/BlockIOBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ]
)
