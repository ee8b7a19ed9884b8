#!/usr/bin/env bash
# Builds the libFuzzer targets of Fuzz/ and runs them on their corpora (Fuzz/Corpus/TARGET/).
#
# Usage: tools/fuzz.sh TARGET|all [--runs N] [--time S] [--fresh] [--merge] [--build-only] [-- LIBFUZZER_ARGS...]
#   TARGET        nbd-handshake | nbd-transmission | control | bitmap (Fuzz/README.md says what each fuzzes)
#   --runs N      stop each target after N executions
#   --time S      stop each target after S seconds (with neither option: 60 s)
#   --fresh       start from the committed corpus alone (what tools/test.sh does), not also from
#                 what earlier runs found (Fuzz/.build-fuzz/corpus/TARGET)
#   --merge       afterwards, add the inputs that reached new coverage to Fuzz/Corpus/TARGET (libFuzzer -merge=1)
#   --build-only  build, run nothing
# Prints per target: executions, executions/s, coverage (cov: edges, ft: features), corpus size;
# exits 1 if any target crashed, leaked, ran out of memory or timed out on an input. Such inputs are
# kept in Fuzz/.build-fuzz/crashes/TARGET/ and printed in base64; replay one with
#   Fuzz/.build-fuzz/release/fuzz-TARGET FILE
#
# The build (release, scratch path Fuzz/.build-fuzz) instruments every Swift module with
# -sanitize=fuzzer,address. It is given as one -Xswiftc flag because the Swift driver keeps only the
# last -sanitize= it is given (SwiftPM's `--sanitize fuzzer --sanitize address` yields an
# AddressSanitizer build without coverage); `--sanitize fuzzer` is passed too, since it is what makes
# SwiftPM leave `main` to libFuzzer. -enable-testing lets the targets `@testable import` the
# internals they drive (the NBD connection handler, the control socket's line framing).
# --disable-build-manifest-caching: SwiftPM's cached build plan does not see a source file added to
# the main package (a path dependency here), and the build then fails on the missing symbols.
# Runs niced (the machine is shared), one target at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source tools/setup.sh

all_targets=(nbd-handshake nbd-transmission control bitmap)
usage() { sed -n '2,14p' "$0" >&2; exit 64; }
(($#)) || usage
what=$1; shift
runs="" time="" fresh=0 merge=0 build_only=0 extra=()
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --time) time=$2; shift 2 ;;
        --fresh) fresh=1; shift ;;
        --merge) merge=1; shift ;;
        --build-only) build_only=1; shift ;;
        --) shift; extra=("$@"); break ;;
        *) usage ;;
    esac
done
if [[ $what == all ]]; then targets=("${all_targets[@]}")
elif [[ " ${all_targets[*]} " == *" $what "* ]]; then targets=("$what")
else usage
fi
[[ -n $runs || -n $time ]] || time=60

scratch=$root/Fuzz/.build-fuzz
started=$(date +%s)
mkdir -p "$scratch/logs"
for target in "${targets[@]}"; do
    status=0
    nice -n 10 swift build -c release --package-path Fuzz --scratch-path "$scratch" --disable-build-manifest-caching --sanitize fuzzer \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing --product "fuzz-$target" > "$scratch/logs/build.log" 2>&1 || status=$?
    grep -v "Cannot export local symbol" "$scratch/logs/build.log" | grep -E "error|warning:" >&2 || true
    ((status == 0)) || { echo "fuzz: the build of fuzz-$target failed (Fuzz/.build-fuzz/logs/build.log)" >&2; exit 1; }
done
echo "fuzz: built ${targets[*]} in $(($(date +%s) - started)) s"
((build_only)) && exit 0

# Longest input per target: the largest seed (a bitmap file of four pages is 48 KiB) and room to grow.
declare -A max_len=([nbd-handshake]=16384 [nbd-transmission]=8192 [control]=4096 [bitmap]=53248)
export SWIFT_BACKTRACE=enable=no   # libFuzzer reports crashes; Swift's backtracer would wait on them
# AddressSanitizer still catches every bad access, but records no stack for each allocation: that
# unwinding was 40% of an execution here (the bitmap target runs 1.7x faster without it). A report
# then names where the access happened, not where the memory was allocated or freed; for those,
# replay the input with ASAN_OPTIONS=malloc_context_size=30.
export ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=0}
# The targets write their inputs to files (the bitmap reader opens a path): in memory where it can.
tmpbase=/tmp; [[ -d /dev/shm && -w /dev/shm ]] && tmpbase=/dev/shm
tmp=$(mktemp -d "$tmpbase/blockmirror-fuzz.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
failed=()
printf '%-18s %12s %9s %7s %7s %8s %s\n' target executions exec/s cov ft corpus result > "$tmp/summary"
for target in "${targets[@]}"; do
    binary=$scratch/release/fuzz-$target
    seeds=$root/Fuzz/Corpus/$target
    corpus=$scratch/corpus/$target
    ((fresh)) && corpus=$tmp/$target/corpus
    crashes=$scratch/crashes/$target
    log=$scratch/logs/$target.log
    mkdir -p "$seeds" "$corpus" "$crashes" "$(dirname "$log")" "$tmp/$target"
    options=(-max_len="${max_len[$target]}" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1
             -artifact_prefix="$crashes/")
    [[ -f $root/Fuzz/Dictionaries/$target.dict ]] && options+=(-dict="$root/Fuzz/Dictionaries/$target.dict")
    [[ -n $runs ]] && options+=(-runs="$runs")
    [[ -n $time ]] && options+=(-max_total_time="$time")
    touch "$tmp/$target.start"
    echo "fuzz: $target (log: ${log#"$root"/})"
    status=0
    TMPDIR=$tmp/$target nice -n 10 "$binary" "${options[@]}" "${extra[@]}" "$corpus" "$seeds" > "$log" 2>&1 || status=$?
    grep -v "Cannot export local symbol" "$log" | grep -E "^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE))" | tail -2 | sed 's/^/  /'
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E "^#[0-9]+" "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    size=$(ls "$corpus" "$seeds" | grep -cv -e '^$' -e ':$' || true)
    result=ok
    new=$(find "$crashes" -type f -newer "$tmp/$target.start" ! -name 'slow-unit-*' -printf '%f\n')
    # libFuzzer keeps an input one execution of which took over 10 s: a slow input, or a machine
    # that starved the run (then its replay takes milliseconds). Reported, not a failure.
    for file in $(find "$crashes" -type f -newer "$tmp/$target.start" -name 'slow-unit-*' -printf '%f\n'); do
        echo "  slow input $target/$file: one execution took over 10 s; replay it to tell a slow input from a busy machine" >&2
    done
    if ((status != 0)) || [[ -n $new ]]; then
        result="FAILED (exit $status)"
        failed+=("$target")
        grep -v "Cannot export local symbol" "$log" | grep -E -m 20 "fuzz check failed|ERROR: |SUMMARY|Fatal error|#[0-9]+ 0x[0-9a-f]+ in \\$" | sed 's/^/  /' >&2 || true
        for file in $new; do
            echo "  input $target/$file ($(stat -c %s "$crashes/$file") bytes): base64 $(base64 -w0 "$crashes/$file" | head -c 2000)" >&2
        done
    fi
    printf '%-18s %12s %9s %7s %7s %8s %s\n' "$target" "${executions:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "$size" "$result" >> "$tmp/summary"
    if ((merge)) && [[ $result == ok ]]; then
        TMPDIR=$tmp/$target nice -n 10 "$binary" -merge=1 -max_len="${max_len[$target]}" "$seeds" "$corpus" >> "$log" 2>&1
        echo "  merged: Fuzz/Corpus/$target holds $(ls "$seeds" | wc -l) inputs"
    fi
done
cat "$tmp/summary"
if ((${#failed[@]})); then
    echo "fuzz: crashes in ${failed[*]}" >&2
    exit 1
fi
