extension UInt64 {
    /// `self / divisor` rounded up. `(self + divisor - 1) / divisor` traps near 2^64, and sizes
    /// read from bitmap files, clients or the kernel can be that large.
    public func dividedRoundingUp(by divisor: UInt64) -> UInt64 {
        self / divisor + (self % divisor == 0 ? 0 : 1)
    }

    /// `self * factor`, or `UInt64.max` where that overflows: for unit conversions of numbers
    /// parsed from text (KiB or sectors to bytes), where a nonsense value must not trap.
    public func multipliedSaturating(by factor: UInt64) -> UInt64 {
        let (product, overflow) = multipliedReportingOverflow(by: factor)
        return overflow ? .max : product
    }
}
