// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "BlockMirror",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "blockmirror", targets: ["blockmirror"]),
        .library(name: "BlockIO", targets: ["BlockIO"]),
        .library(name: "BlockExport", targets: ["BlockExport"]),
        .library(name: "NBD", targets: ["NBD"]),
        .library(name: "Mirror", targets: ["Mirror"]),
        .library(name: "Control", targets: ["Control"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
    ],
    targets: [
        /// libaio and the Linux ioctl / fcntl constants Swift cannot import as macros.
        .systemLibrary(name: "CLibAIO", path: "Sources/CLibAIO"),
        /// Typed block I/O: files and block devices, O_DIRECT, aligned buffers, libaio.
        .target(
            name: "BlockIO",
            dependencies: [
                "CLibAIO",
                .product(name: "Logging", package: "swift-log"),
            ]),
        /// The block-export protocol every NBD-served thing conforms to, and the file export.
        .target(
            name: "BlockExport",
            dependencies: [
                "BlockIO",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        /// What a mirror reports (state, status, check report, speed limits), apart from the engine
        /// so that the control socket and the md backend do not link it.
        .target(
            name: "MirrorModel",
            dependencies: ["BlockIO"]),
        /// The mirror engine: dirty-region bitmap, write fan-out, background copy, write-intent log.
        .target(
            name: "Mirror",
            dependencies: [
                "BlockIO", "BlockExport", "MirrorModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        /// NBD protocol: codec (no I/O) and a SwiftNIO server serving any BlockExport.
        .target(
            name: "NBD",
            dependencies: [
                "BlockIO", "BlockExport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        /// Kernel md through mdadm and /proc/mdstat and sysfs: parsers and the md backend.
        .target(
            name: "NBDTLS",
            dependencies: [
                "BlockIO", "NBD",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]),
        .target(
            name: "MDBackend",
            dependencies: ["BlockIO", "MirrorModel"]),
        /// The control socket of a mirror daemon: line-delimited JSON requests and responses.
        .target(
            name: "Control",
            dependencies: [
                "BlockIO", "MirrorModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        /// A fleet migration's plan (`blockmirror migrate PLAN`): TOML read and checked, every
        /// mistake named with its volume and key.
        .target(
            name: "MigrationPlan",
            dependencies: [
                "BlockIO", "Control", "NBD",
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]),
        /// A serving daemon around an export: libaio on the event loops, the NBD listeners, the
        /// control socket, signals, metrics, a clean stop (a library, so tests can run one in-process).
        .target(
            name: "Daemon",
            dependencies: [
                "BlockIO", "BlockExport", "NBD", "NBDTLS", "Mirror", "MirrorModel", "Control", "MigrationPlan",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        /// Command-line verbs (library so tests can parse arguments without a process).
        .target(
            name: "BlockMirrorCLI",
            dependencies: [
                "BlockIO", "BlockExport", "NBD", "NBDTLS", "Mirror", "MirrorModel", "Control", "MDBackend", "Daemon", "MigrationPlan",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]),
        .executableTarget(name: "blockmirror", dependencies: ["BlockMirrorCLI"]),
        .testTarget(
            name: "DaemonTests",
            dependencies: [
                "Daemon", "BlockIO", "BlockExport", "Mirror", "NBD", "Control", "MirrorModel",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "BlockIOTests",
            dependencies: ["BlockIO"]),
        .testTarget(
            name: "MigrationPlanTests",
            dependencies: ["MigrationPlan", "Control"]),
        .testTarget(
            name: "BlockExportTests",
            dependencies: [
                "BlockExport", "BlockIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "MirrorTests",
            dependencies: [
                "Mirror", "MirrorModel", "BlockIO", "BlockExport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .testTarget(
            name: "MDBackendTests",
            dependencies: ["MDBackend", "MirrorModel"],
            resources: [.copy("Fixtures")]),
        .testTarget(
            name: "ControlTests",
            dependencies: [
                "Control", "BlockIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "NBDTests",
            dependencies: [
                "NBD", "NBDTLS", "BlockExport", "BlockIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["blockmirror", "NBD", "Mirror", "MirrorModel", "Control"]),
    ]
)
