#!/usr/bin/env bash
# End-to-end benchmark of `blockmirror serve` (passthrough NBD export) against the raw file and
# the peers, all on the same image file, with fio:
#   raw          fio --ioengine=libaio --direct=1 on the image (the limit)
#   blockmirror  blockmirror serve IMG --listen unix:SOCK          (fio --ioengine=nbd)
#   qemu-nbd     qemu-nbd --cache=none --aio=native                (fio --ioengine=nbd)
#   nbdkit       nbdkit file plugin cache=none (reads are page-cache backed: not an O_DIRECT peer)
# Workloads: 4k randread QD32, 4k randwrite QD32 (IOPS); 1M sequential read/write QD32 (MiB/s).
# Every (target, workload) runs REPEAT times, targets interleaved (a fresh server for each run,
# target order rotated each round); the table shows medians and the ratio to raw.
#
# Usage: tools/bench-passthrough.sh          (as root on Debian 12: installs missing packages)
# Environment:
#   SIZE=2G           image size (random data; a multiple of 1 MiB; K/M/G suffixes, powers of 2)
#   RUNTIME=8         seconds per fio run
#   REPEAT=3          runs per (target, workload); the median is reported
#   TARGETS="raw blockmirror qemu-nbd nbdkit"   subset/order of targets (raw is always added)
#   BLOCKMIRROR_BIN=  use this binary instead of building (swift build -c release --scratch-path .build-release)
#   WORKDIR_BASE=/var/tmp   where the work dir goes (must allow O_DIRECT: not /dev/shm or tmpfs)
#   RESULTS=/var/tmp/blockmirror-bench-passthrough-DATE.json   where the JSON results go
#   KEEP_WORK=1       keep the work dir (image, fio outputs, server logs) instead of deleting it
# Exit code: 0 if every run succeeded (goal misses are reported, not signalled), 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=$ROOT/tools/lib/bench_fio.py
# shellcheck source=tools/lib/bench_common.sh
source "$ROOT/tools/lib/bench_common.sh"

SIZE=${SIZE:-2G}
RUNTIME=${RUNTIME:-8}
REPEAT=${REPEAT:-3}
TARGETS=${TARGETS:-raw blockmirror qemu-nbd nbdkit}
WORKDIR_BASE=${WORKDIR_BASE:-/var/tmp}
RESULTS=${RESULTS:-/var/tmp/blockmirror-bench-passthrough-$(date +%Y%m%d-%H%M%S).json}
KEEP_WORK=${KEEP_WORK:-0}
READY_TIMEOUT=${READY_TIMEOUT:-60}   # seconds for a server to accept connections
STOP_TIMEOUT=${STOP_TIMEOUT:-30}     # seconds for a server to exit after SIGTERM

# workload id -> fio arguments (ids match tools/lib/bench_fio.py)
WORKLOADS=(randread4k randwrite4k seqread1m seqwrite1m)
declare -A FIO_ARGS=(
    [randread4k]="--rw=randread --bs=4k --iodepth=32"
    [randwrite4k]="--rw=randwrite --bs=4k --iodepth=32"
    [seqread1m]="--rw=read --bs=1M --iodepth=32"
    [seqwrite1m]="--rw=write --bs=1M --iodepth=32"
)
declare -A DIRECTION=([randread4k]=read [randwrite4k]=write [seqread1m]=read [seqwrite1m]=write)
declare -A METRIC=([randread4k]=iops [randwrite4k]=iops [seqread1m]=mibs [seqwrite1m]=mibs)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# log_tail FILE: the last 20 lines of FILE's newest "=== start ===" section, to stderr.
log_tail() { awk '/^=== .* start ===$/ { n = 0 } { line[n++] = $0 } END { for (i = (n > 20 ? n - 20 : 0); i < n; i++) print line[i] }' "$1" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- arguments
[[ $RUNTIME =~ ^[0-9]+$ && $RUNTIME -gt 0 ]] || die "RUNTIME must be a positive number of seconds (got '$RUNTIME')"
[[ $REPEAT =~ ^[0-9]+$ && $REPEAT -gt 0 ]] || die "REPEAT must be a positive integer (got '$REPEAT')"
size_spec=${SIZE%iB}; size_spec=${size_spec%B}
SIZE_BYTES=$(numfmt --from=iec "$size_spec" 2>/dev/null) || die "cannot parse SIZE='$SIZE' (use e.g. 512M, 2G)"
((SIZE_BYTES > 0 && SIZE_BYTES % 1048576 == 0)) || die "SIZE must be a positive multiple of 1 MiB (got $SIZE_BYTES bytes)"

read -r -a target_list <<<"$TARGETS"
targets=(raw)
for t in "${target_list[@]}"; do
    case $t in
        raw) ;;
        blockmirror | qemu-nbd | nbdkit) [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t") ;;
        *) die "unknown target '$t' (known: raw blockmirror qemu-nbd nbdkit)" ;;
    esac
done
want() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- packages
declare -A PKG_FOR=([fio]=fio [qemu-nbd]=qemu-utils [nbdkit]=nbdkit [nbdinfo]=libnbd-bin [python3]=python3)
missing=()
need_cmds=(fio nbdinfo python3)
want qemu-nbd && need_cmds+=(qemu-nbd)
want nbdkit && need_cmds+=(nbdkit)
for cmd in "${need_cmds[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG_FOR[$cmd]}")
done
# nbdkit's file plugin ships in the nbdkit package on Debian 12; check it anyway.
if want nbdkit && command -v nbdkit >/dev/null 2>&1 && ! nbdkit file --version >/dev/null 2>&1; then
    missing+=(nbdkit)
fi
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
fio --enghelp 2>/dev/null | grep -w nbd >/dev/null || die "this fio has no nbd engine (Debian's fio package has it)"

# ---------------------------------------------------------------- work dir and cleanup
mkdir -p "$WORKDIR_BASE"
WORK=$(mktemp -d "$WORKDIR_BASE/blockmirror-bench.XXXXXX")
IMG=$WORK/image.raw
SOCK=$WORK/nbd.sock
SAMPLES=$WORK/samples.tsv
SERVER_PID=
SERVER_TARGET=
FAILURES=0

stop_server() {  # stop the running server (SIGTERM, then SIGKILL after STOP_TIMEOUT); sets STOP_RC
    STOP_RC=0
    [[ -n $SERVER_PID ]] || return 0
    stop_pid "$SERVER_PID" "$SERVER_TARGET" TERM
    SERVER_PID=
    rm -f "$SOCK"
}

cleanup() {
    local rc=$?
    trap - EXIT
    stop_server || true
    finish_workdir "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

check_workdir "$SIZE_BYTES" "a $SIZE image"

# ---------------------------------------------------------------- blockmirror binary
if want blockmirror; then
    if [[ -z ${BLOCKMIRROR_BIN:-} ]]; then
        if ! command -v swift >/dev/null 2>&1; then
            for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
                [[ -x $dir/swift ]] && export PATH="$dir:$PATH" && break
            done
        fi
        command -v swift >/dev/null 2>&1 || die "no Swift toolchain on PATH (or set BLOCKMIRROR_BIN)"
        log "building blockmirror: swift build -c release --scratch-path .build-release"
        if ! (cd "$ROOT" && swift build -c release --scratch-path .build-release) >"$WORK/build.log" 2>&1; then
            tail -30 "$WORK/build.log" >&2
            die "the release build failed (log above)"
        fi
        BLOCKMIRROR_BIN=$(cd "$ROOT" && swift build -c release --scratch-path .build-release --show-bin-path)/blockmirror
    fi
    [[ -x $BLOCKMIRROR_BIN ]] || die "BLOCKMIRROR_BIN=$BLOCKMIRROR_BIN is not an executable"
fi

# ---------------------------------------------------------------- image
log "creating a $SIZE ($SIZE_BYTES bytes) image of random data in $WORK"
head -c "$SIZE_BYTES" /dev/urandom >"$IMG"
sync "$IMG"

# ---------------------------------------------------------------- servers
# start_server TARGET: starts it on $SOCK in the background (its stderr appended to
# $WORK/TARGET.log), waits until it accepts NBD connections and serves the whole image, and
# sets URI. Returns 1 (after printing the log tail) if it dies or is not ready in time.
start_server() {
    local target=$1 logf=$WORK/$1.log
    rm -f "$SOCK" "$WORK/$target.uri"
    echo "=== $(date +%T) start ===" >>"$logf"
    case $target in
        blockmirror)
            "$BLOCKMIRROR_BIN" serve "$IMG" --listen "unix:$SOCK" >"$WORK/blockmirror.uri" 2>>"$logf" &
            ;;
        qemu-nbd)
            # -t: keep serving after a client disconnects (the readiness probe is a client).
            qemu-nbd -t -f raw --cache=none --aio=native -k "$SOCK" -e 8 "$IMG" >>"$logf" 2>&1 &
            ;;
        nbdkit)
            nbdkit -f --exit-with-parent -U "$SOCK" file file="$IMG" cache=none >>"$logf" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    SERVER_TARGET=$target
    URI=
    local deadline=$((SECONDS + READY_TIMEOUT)) size
    while ((SECONDS < deadline)); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            local rc=0
            wait "$SERVER_PID" 2>/dev/null || rc=$?
            SERVER_PID=
            log "$target exited (status $rc) before it was ready; tail of $logf:"
            log_tail "$logf"
            return 1
        fi
        if [[ -z $URI ]]; then
            if [[ $target == blockmirror ]]; then
                # The server prints its URI on its first stdout line once it listens.
                if [[ $(wc -l <"$WORK/blockmirror.uri") -ge 1 ]]; then
                    URI=$(head -1 "$WORK/blockmirror.uri")
                    [[ $URI == nbd+unix://* ]] || { log "$target printed an unexpected URI: '$URI'"; log_tail "$logf"; return 1; }
                fi
            elif [[ -S $SOCK ]]; then
                URI="nbd+unix:///?socket=$SOCK"
            fi
        fi
        if [[ -n $URI ]] && size=$(nbdinfo --size "$URI" 2>/dev/null); then
            if [[ $size != "$SIZE_BYTES" ]]; then
                log "$target exports $size bytes, the image has $SIZE_BYTES"
                return 1
            fi
            return 0
        fi
        sleep 0.05
    done
    log "$target not ready after ${READY_TIMEOUT}s; tail of $logf:"
    log_tail "$logf"
    return 1
}

# run_fio TARGET WORKLOAD OUT: one fio run, JSON to OUT (stderr to OUT.err).
run_fio() {
    local target=$1 workload=$2 out=$3
    local -a args=(--name=bench --numjobs=1 --runtime="$RUNTIME" --time_based --output-format=json)
    # shellcheck disable=SC2206  # word splitting of the workload's fio arguments is wanted
    args+=(${FIO_ARGS[$workload]})
    if [[ $target == raw ]]; then
        args+=(--ioengine=libaio --direct=1 --filename="$IMG")
    else
        args+=(--ioengine=nbd --uri="$URI")
    fi
    timeout --kill-after=10 $((RUNTIME * 3 + 60)) fio "${args[@]}" >"$out" 2>"$out.err"
}

# measure TARGET WORKLOAD ROUND: appends one sample (or "-" on failure) to $SAMPLES.
measure() {
    local target=$1 workload=$2 round=$3 out=$WORK/$1.$2.$3.fio.json value=
    if [[ $target != raw ]] && ! start_server "$target"; then
        stop_server
        FAILURES=$((FAILURES + 1))
        printf '%s\t%s\t%s\t-\n' "$target" "$workload" "$round" >>"$SAMPLES"
        return 0
    fi
    if run_fio "$target" "$workload" "$out"; then
        value=$(python3 "$HELPER" value "$out" "${DIRECTION[$workload]}" "${METRIC[$workload]}" 2>>"$out.err") || value=
    fi
    if [[ -z $value ]]; then
        log "fio failed: $target $workload round $round; fio said:"
        tail -10 "$out.err" >&2
        if [[ $target != raw ]]; then
            log "tail of $WORK/$target.log:"
            log_tail "$WORK/$target.log"
        fi
        FAILURES=$((FAILURES + 1))
    fi
    if [[ $target != raw ]]; then
        stop_server
        if ((STOP_RC != 0)); then
            log "warning: $target exited with status $STOP_RC after SIGTERM; tail of $WORK/$target.log:"
            log_tail "$WORK/$target.log"
            if [[ $target == blockmirror ]]; then FAILURES=$((FAILURES + 1)); fi
        fi
    fi
    printf '%s\t%s\t%s\t%s\n' "$target" "$workload" "$round" "${value:--}" >>"$SAMPLES"
    local unit=MiB/s
    if [[ ${METRIC[$workload]} == iops ]]; then unit=IOPS; fi
    log "round $round/$REPEAT  $(printf '%-11s %-11s' "$workload" "$target") ${value:-FAILED} $unit"
}

# ---------------------------------------------------------------- run
: >"$SAMPLES"
n=${#targets[@]}
total_runs=$((REPEAT * ${#WORKLOADS[@]} * n))
log "targets: ${targets[*]}; ${#WORKLOADS[@]} workloads x $REPEAT rounds x ${RUNTIME}s: $total_runs runs, about $((total_runs * (RUNTIME + 1) / 60 + 1)) min"
for ((round = 1; round <= REPEAT; round++)); do
    for workload in "${WORKLOADS[@]}"; do
        for ((i = 0; i < n; i++)); do
            measure "${targets[$(((i + round - 1) % n))]}" "$workload" "$round"
        done
    done
done

# Warnings and errors the blockmirror server logged although every run succeeded.
if want blockmirror && [[ -s $WORK/blockmirror.log ]] && grep -qiE 'warn|error|critical|fatal' "$WORK/blockmirror.log"; then
    log "note: blockmirror logged warnings/errors (last ones):"
    grep -iE 'warn|error|critical|fatal' "$WORK/blockmirror.log" | tail -10 >&2
fi

# ---------------------------------------------------------------- report
python3 - "$WORK/meta.json" <<EOF
import json, subprocess, sys, os, platform, datetime
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        return None
meta = {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "size_bytes": $SIZE_BYTES, "runtime_s": $RUNTIME, "repeat": $REPEAT,
    "targets": "${targets[*]}".split(),
    "workdir_fs": out("stat", "-f", "-c", "%T", "$WORKDIR_BASE"),
    "kernel": platform.release(), "cpus": os.cpu_count(),
    "fio": out("fio", "--version"),
    "qemu_nbd": out("qemu-nbd", "--version") if "qemu-nbd" in "${targets[*]}".split() else None,
    "nbdkit": out("nbdkit", "--version") if "nbdkit" in "${targets[*]}".split() else None,
    "blockmirror_bin": "${BLOCKMIRROR_BIN:-}" or None,
    "git_commit": out("git", "-C", "$ROOT", "rev-parse", "HEAD"),
    "git_dirty": bool(subprocess.run(["git", "-C", "$ROOT", "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True).stdout.strip()),
    "failed_runs": $FAILURES,
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
mkdir -p "$(dirname "$RESULTS")"
echo
python3 "$HELPER" report "$SAMPLES" "$WORK/meta.json" "$RESULTS"
echo
echo "JSON results: $RESULTS"
if ((FAILURES)); then
    log "$FAILURES run(s) failed or a server misbehaved (see the messages above)"
    exit 1
fi
