import Benchmark
import BenchmarkSupport
import Mirror

/// The dirty-region bitmap of a 2 TiB device at 1 MiB regions (2 Mi regions, 256 KiB of words), as
/// the mirror uses it: every write sets the bits of its range, the copier tests and clears them, and
/// finds the next dirty region by scanning. None of it should allocate (nor copy the words).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .blockMirror()

    let deviceSize: UInt64 = 2 << 40, regionSize: UInt64 = 1 << 20

    // 1000 writes scattered over the device, 4 KiB to 4 MiB long and 4 KiB aligned, so that some
    // stay within a region and some span several (the same ranges every run: a 64-bit LCG).
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    let writes: [(offset: UInt64, length: UInt64)] = (0..<1000).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        let offset = ((state >> 24) % (deviceSize >> 12)) << 12
        return (offset, (((state >> 8) & 0x3ff) + 1) << 12)
    }

    Benchmark("set-test-clear-1000-write-ranges") { benchmark in
        var bitmap = RegionBitmap(deviceSize: deviceSize, regionSize: regionSize, allDirty: false)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            var dirty = 0
            for write in writes {
                for region in bitmap.regions(offset: write.offset, length: write.length) { bitmap.setDirty(region) }
            }
            for write in writes {
                for region in bitmap.regions(offset: write.offset, length: write.length) where bitmap.isDirty(region) { dirty &+= 1 }
            }
            for write in writes {
                for region in bitmap.regions(offset: write.offset, length: write.length) { bitmap.setClean(region) }
            }
            blackHole(dirty)
        }
        benchmark.stopMeasurement()
        precondition(bitmap.dirtyCount == 0, "the writes' regions were not all cleared")
    }

    /// Visits every dirty region of `bitmap` in order, as the copier's scan does, and returns how many.
    func scanAll(_ bitmap: RegionBitmap) -> Int {
        var found = 0
        var next = bitmap.nextDirty(from: 0)
        while let region = next {
            found &+= 1
            next = bitmap.nextDirty(from: region + 1)
        }
        return found
    }

    // A new mirror: every region dirty, each scan step finds the next bit in the same word.
    let dense = RegionBitmap(deviceSize: deviceSize, regionSize: regionSize, allDirty: true)
    Benchmark("scan-dense-all-2Mi-regions-dirty") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(scanAll(dense)) }
    }

    // A mirror back from a short outage: 512 regions dirty, one in 4096, so each scan step skips
    // 64 words of zeroes.
    var sparseBits = RegionBitmap(deviceSize: deviceSize, regionSize: regionSize, allDirty: false)
    for region in stride(from: 1234, to: sparseBits.regionCount, by: 4096) { sparseBits.setDirty(region) }
    let sparse = sparseBits
    Benchmark("scan-sparse-512-of-2Mi-regions-dirty") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(scanAll(sparse)) }
    }
}
