#!/usr/bin/env bash
# Runs the test suite (or the tests named by a --filter) under a sanitizer:
#   tools/sanitize.sh address [swift test arguments…]   AddressSanitizer (build in .build-asan)
#   tools/sanitize.sh thread  [swift test arguments…]   ThreadSanitizer  (build in .build-tsan)
# The daemons the integration tests start are the sanitized binary too, so a report in one makes
# its test fail (ASan aborts; TSan exits 66). Swift's Synchronization.Mutex waits on futexes that
# ThreadSanitizer cannot see, so the thread build swaps BlockIO's Mutex for a pthread mutex
# (-DBLOCKMIRROR_TSAN_LOCKS, Sources/BlockIO/Mutex.swift). Skipped: the kernel-md VM test (the
# guest has no sanitizer runtime) and, under ASan, the RSS bounds of ClientMemoryTests (ASan keeps
# freed memory in its quarantine, so memory never goes back). Leak reports are off (the Swift
# runtime and Foundation keep allocations to exit; LeakSanitizer then fails every short-lived CLI
# run: a 32-byte block of Foundation's Process in `build --backend md`).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
kind=${1:-}
shift || true
case $kind in
    address)
        scratch=.build-asan; flags=(); skips=(--skip ClientMemoryTests)
        export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1} ;;
    thread)
        scratch=.build-tsan; flags=(-Xswiftc -DBLOCKMIRROR_TSAN_LOCKS); skips=()
        export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1} ;;
    *) echo "usage: tools/sanitize.sh address|thread [swift test arguments…]" >&2; exit 64 ;;
esac
swift build --build-tests --sanitize="$kind" --scratch-path "$scratch" "${flags[@]}"
swift test --skip-build --sanitize="$kind" --scratch-path "$scratch" "${flags[@]}" --no-parallel --skip KernelMDTests "${skips[@]}" "$@"
