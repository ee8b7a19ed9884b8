import Benchmark

extension Benchmark.Configuration {
    /// The configuration of every BlockMirror benchmark: wall-clock time and allocations, each with
    /// the tolerance `swift package benchmark thresholds check` allows around the p90 stored in
    /// Thresholds/ before it fails (a metric measured without a tolerance would be checked with none).
    ///
    /// - Allocations (`mallocCountTotal`) are counted, not timed: the same code makes the same
    ///   number of them on any machine, however loaded, so by default any change fails the check
    ///   (one more allocation per request shows as one per request times the requests of an
    ///   iteration). `allocations` loosens that for a benchmark whose count depends on timing.
    /// - Wall-clock time is only a coarse guard. These benchmarks run on a shared 2-core VM without
    ///   hardware counters (no `instructions` metric; `cpuUser` counts 10 ms scheduler ticks), where
    ///   other builds, tests and VMs move a p90 from run to run: by up to 3x for the millisecond-long
    ///   iterations (disk reads, the dense scan) and, in a burst of load, 5x for microsecond-long ones.
    ///   So the check fails only above 3x the stored p90 (+200%): it catches an algorithmic slowdown
    ///   (a per-bit scan instead of a per-word one, a copy per request), not a few percent. An
    ///   improvement never fails it (a time cannot fall by more than 100%). `wallClock` is the one
    ///   time metric: `throughput` is its inverse, and would only be a second, noisier check of it.
    public static func blockMirror(maxDuration: Duration = .seconds(3),
                                   allocations: BenchmarkThresholds = .init(absolute: [.p90: 0])) -> Self {
        .init(
            metrics: [.wallClock, .mallocCountTotal],
            maxDuration: maxDuration,
            thresholds: [
                .wallClock: .init(relative: [.p90: 200]),
                .mallocCountTotal: allocations,
            ])
    }
}
