// swift-tools-version:6.1
// Micro-benchmarks (ordo-one/benchmark), kept apart from the main package so that building and
// testing BlockMirror does not build the benchmark framework. README.md says how to run them and
// how to check and update the stored thresholds (Thresholds/).
import PackageDescription

/// A product of the main package.
func blockMirror(_ name: String) -> Target.Dependency { .product(name: name, package: "BlockMirror") }

/// A benchmark executable: Benchmarks/<name>/, run by the framework's plugin.
func benchmarkTarget(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .executableTarget(
        name: name,
        dependencies: ["BenchmarkSupport", .product(name: "Benchmark", package: "benchmark")] + dependencies,
        path: "Benchmarks/\(name)",
        plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")])
}

let package = Package(
    name: "BlockMirrorBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "BlockMirror", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
    ],
    targets: [
        /// What every benchmark target shares: the metrics measured and the tolerances of the check.
        .target(
            name: "BenchmarkSupport",
            dependencies: [.product(name: "Benchmark", package: "benchmark")],
            path: "Benchmarks/BenchmarkSupport"),
        benchmarkTarget("NBDCodecBenchmarks", [blockMirror("NBD"), .product(name: "NIOCore", package: "swift-nio")]),
        benchmarkTarget("RegionBitmapBenchmarks", [blockMirror("Mirror")]),
        benchmarkTarget("BlockIOBenchmarks", [blockMirror("BlockIO"), .product(name: "Logging", package: "swift-log")]),
    ]
)
