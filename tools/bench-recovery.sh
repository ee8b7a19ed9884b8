#!/usr/bin/env bash
# Recovery benchmark of `blockmirror build` against the raw copy limit and qemu-storage-daemon's
# blockdev-mirror, all on the same two files (OLD: random data; NEW: a fresh fallocated file of
# the same size before every recovery), with fio:
#   1. idle recovery OLD -> NEW:
#        raw fio      fio reading OLD and writing NEW at the same time, 1M QD16 each, libaio O_DIRECT
#                     (what the disk does for a pipelined copy; not a copy: NEW gets fio's data)
#        raw dd       dd iflag=direct oflag=direct bs=$DD_BS (a real copy, one request at a time)
#                     (ratios "vs raw" are against the faster of the two, by median)
#        qsd          blockdev-mirror sync=full (O_DIRECT, aio=native both sides): time from the
#                     command to BLOCK_JOB_READY
#        blockmirror  blockmirror build NAME --source OLD --target missing, then (its export up)
#                     blockmirror add NAME NEW: time from the add to `blockmirror status --json`
#                     reporting "in-sync" (BM_START=build: --target NEW, timed from the start)
#   2. the same under fio --ioengine=nbd 64k randwrite QD8 through each one's NBD export, from
#      before the recovery until it is done (at most LOAD_TIMEOUT s): recovery time and the
#      foreground MiB/s of fio within the recovery (and in the FIO_WARMUP s before it);
#   3. 4k randwrite QD32 (fio nbd engine, RUNTIME s) on the mirror once in sync: blockmirror
#      in-sync against qsd's job in ready state (not completed: writes keep being mirrored), and
#      raw libaio O_DIRECT on OLD alone as a reference.
# After each mirror run the daemon is stopped (qsd: block-job-cancel of the ready job, which
# leaves NEW a consistent copy) and NEW is compared with OLD (O_DIRECT reads). Every measure runs
# REPEAT times, the targets' order rotated each round; the tables show medians, min-max and ratios.
#
# Usage: tools/bench-recovery.sh      (as root on Debian 12: installs missing packages)
# Environment:
#   SIZE=2G            size of OLD and NEW (a multiple of 1 MiB; K/M/G suffixes), e.g. SIZE=512M
#   REPEAT=3           rounds; the median is reported
#   RUNTIME=10         seconds per 4k randwrite run
#   LOAD_TIMEOUT=60    seconds a recovery under load may take before the load stops (then the
#                      recovery is reported as "not done", with its progress, and finishes idle)
#   SYNC_TIMEOUT=600   seconds any recovery may take at all
#   TARGETS="raw qsd blockmirror"   subset/order (raw is always run: it is the reference)
#   QSD_COPY_MODE=write-blocking    qsd's copy-mode (write-blocking: writes reach both sides
#                      before they complete, as with blockmirror; or background)
#   QSD_SPEED=0        qsd's speed limit in bytes/s (0: none)
#   BM_ARGS=           extra arguments for blockmirror build (e.g. "--speed-min 100000")
#   BM_START=add       how blockmirror's recovery starts: add (default when the binary has the
#                      verb): `build --target missing`, then `blockmirror add NAME NEW` once its
#                      export is up (and the load running), like qsd's blockdev-mirror on a
#                      running daemon; build: `build --target NEW`, timed from the process start
#   DD_BS=1M           block size of the dd copy
#   VERIFY=1           compare NEW with OLD after each mirror run (0: skip)
#   FIO_WARMUP=1       seconds the load runs through the export before the recovery starts
#   BLOCKMIRROR_BIN=   use this binary instead of building
#   SCRATCH=.build-release   SwiftPM scratch path of the release build (relative to the project)
#   WORKDIR_BASE=/var/tmp    where OLD and NEW go (must allow O_DIRECT: not /dev/shm or tmpfs)
#   RESULTS=/var/tmp/blockmirror-bench-recovery-DATE.json   where the JSON results go
#   KEEP_WORK=1        keep the work dir (files, fio outputs, logs) instead of deleting it
# Exit code: 0 if every run succeeded and every copy compared equal, 1 otherwise.
set -euo pipefail
shopt -s extglob
export LC_ALL=C   # a "." in $EPOCHREALTIME and in printf's numbers

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=$ROOT/tools/lib/bench_recovery.py
FIO_HELPER=$ROOT/tools/lib/bench_fio.py
# shellcheck source=tools/lib/bench_common.sh
source "$ROOT/tools/lib/bench_common.sh"

SIZE=${SIZE:-2G}
REPEAT=${REPEAT:-3}
RUNTIME=${RUNTIME:-10}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-60}
SYNC_TIMEOUT=${SYNC_TIMEOUT:-600}
TARGETS=${TARGETS:-raw qsd blockmirror}
QSD_COPY_MODE=${QSD_COPY_MODE:-write-blocking}
QSD_SPEED=${QSD_SPEED:-0}
BM_ARGS=${BM_ARGS:-}
BM_START=${BM_START:-}
DD_BS=${DD_BS:-1M}
VERIFY=${VERIFY:-1}
FIO_WARMUP=${FIO_WARMUP:-1}
SCRATCH=${SCRATCH:-.build-release}
WORKDIR_BASE=${WORKDIR_BASE:-/var/tmp}
RESULTS=${RESULTS:-/var/tmp/blockmirror-bench-recovery-$(date +%Y%m%d-%H%M%S).json}
KEEP_WORK=${KEEP_WORK:-0}
READY_TIMEOUT=${READY_TIMEOUT:-60}   # seconds for a daemon to accept NBD connections
STOP_TIMEOUT=${STOP_TIMEOUT:-60}     # seconds for a daemon to exit once told to stop
NAME=benchrec                        # blockmirror's mirror name (and NBD export name)

log() { printf '[bench-recovery %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
log_tail() { if [[ -s $1 ]]; then tail -20 "$1" >&2; fi; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- arguments
for v in REPEAT RUNTIME LOAD_TIMEOUT SYNC_TIMEOUT; do
    if ! is_uint "${!v}" || ((${!v} == 0)); then die "$v must be a positive integer (got '${!v}')"; fi
done
is_uint "$QSD_SPEED" || die "QSD_SPEED must be a number of bytes/s (got '$QSD_SPEED')"
[[ $FIO_WARMUP =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "FIO_WARMUP must be a number of seconds (got '$FIO_WARMUP')"
case $BM_START in "" | add | build) ;; *) die "BM_START must be add or build" ;; esac
case $QSD_COPY_MODE in background | write-blocking) ;; *) die "QSD_COPY_MODE must be background or write-blocking" ;; esac
size_spec=${SIZE%iB}; size_spec=${size_spec%B}
SIZE_BYTES=$(numfmt --from=iec "$size_spec" 2>/dev/null) || die "cannot parse SIZE='$SIZE' (use e.g. 512M, 2G)"
((SIZE_BYTES > 0 && SIZE_BYTES % 1048576 == 0)) || die "SIZE must be a positive multiple of 1 MiB (got $SIZE_BYTES bytes)"
[[ $WORKDIR_BASE != *,* ]] || die "WORKDIR_BASE must not contain a comma (qemu's option syntax)"
read -r -a bm_args <<<"$BM_ARGS"

read -r -a target_list <<<"$TARGETS"
targets=(raw)
for t in "${target_list[@]}"; do
    case $t in
        raw) ;;
        qsd | blockmirror) [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t") ;;
        *) die "unknown target '$t' (known: raw qsd blockmirror)" ;;
    esac
done
want() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- packages
declare -A PKG_FOR=([fio]=fio [qemu-storage-daemon]=qemu-system-common [nbdinfo]=libnbd-bin
                    [python3]=python3 [fallocate]=util-linux)
need_cmds=(fio nbdinfo python3 fallocate)
want qsd && need_cmds+=(qemu-storage-daemon)
missing=()
for cmd in "${need_cmds[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG_FOR[$cmd]}")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi
for cmd in "${need_cmds[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing (package ${PKG_FOR[$cmd]})"
done
fio --enghelp 2>/dev/null | grep -w nbd >/dev/null || die "this fio has no nbd engine (Debian's fio package has it)"
fio --enghelp 2>/dev/null | grep -w libaio >/dev/null || die "this fio has no libaio engine"

# ---------------------------------------------------------------- work dir, processes, cleanup
mkdir -p "$WORKDIR_BASE"
WORK=$(mktemp -d "$WORKDIR_BASE/blockmirror-bench-recovery.XXXXXX")
OLD=$WORK/old.raw
NEW=$WORK/new.raw
RUN=$WORK/run
QMP_SOCK=$WORK/qsd-qmp.sock
QSD_SOCK=$WORK/qsd-nbd.sock
BM_SOCK=$WORK/bm-nbd.sock
SAMPLES=$WORK/samples.tsv
FIO_PID='' QSD_PID='' BM_PID='' CHILD_PID=''
FAILURES=0
NOTES=()

# fg_run CMD...: runs CMD in the background and waits for it, so that a signal to this script is
# acted on at once (bash runs traps only between foreground commands); cleanup ends CHILD_PID.
fg_run() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=
    return "$rc"
}

stop_fio() {  # SIGINT: fio stops its job and still writes its JSON and logs
    [[ -n $FIO_PID ]] || return 0
    stop_pid "$FIO_PID" fio INT
    FIO_PID=
}

stop_qsd() {
    [[ -n $QSD_PID ]] || return 0
    stop_pid "$QSD_PID" qemu-storage-daemon TERM
    QSD_PID=
    rm -f "$QMP_SOCK" "$QSD_SOCK"
}

# stop_bm: `blockmirror stop` (drains, flushes, waits for the exit), SIGTERM if that fails.
# Sets BM_STOP_LINE (what stop printed) and STOP_RC (the daemon's exit status).
stop_bm() {
    BM_STOP_LINE=
    STOP_RC=0
    [[ -n $BM_PID ]] || return 0
    if kill -0 "$BM_PID" 2>/dev/null; then
        if ! BM_STOP_LINE=$(timeout "$STOP_TIMEOUT" "$BLOCKMIRROR_BIN" stop "$NAME" --run-dir "$RUN" 2>>"$WORK/blockmirror.log"); then
            log "warning: blockmirror stop $NAME failed (see $WORK/blockmirror.log); SIGTERM"
            FAILURES=$((FAILURES + 1))
        fi
    fi
    stop_pid "$BM_PID" blockmirror TERM
    BM_PID=
    rm -f "$BM_SOCK"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD_PID ]]; then kill -TERM "$CHILD_PID" 2>/dev/null || true; wait "$CHILD_PID" 2>/dev/null || true; fi
    stop_fio || true
    stop_bm || true
    stop_qsd || true
    finish_workdir "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

check_workdir $((2 * SIZE_BYTES)) "two $SIZE files"

# ---------------------------------------------------------------- blockmirror binary
if want blockmirror; then
    if [[ -z ${BLOCKMIRROR_BIN:-} ]]; then
        if ! command -v swift >/dev/null 2>&1; then
            for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
                [[ -x $dir/swift ]] && export PATH="$dir:$PATH" && break
            done
        fi
        command -v swift >/dev/null 2>&1 || die "no Swift toolchain on PATH (or set BLOCKMIRROR_BIN)"
        log "building blockmirror: swift build -c release --scratch-path $SCRATCH"
        if ! (cd "$ROOT" && swift build -c release --scratch-path "$SCRATCH") >"$WORK/build.log" 2>&1; then
            tail -30 "$WORK/build.log" >&2
            die "the release build failed (log above)"
        fi
        BLOCKMIRROR_BIN=$(cd "$ROOT" && swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/blockmirror
    fi
    [[ -x $BLOCKMIRROR_BIN ]] || die "BLOCKMIRROR_BIN=$BLOCKMIRROR_BIN is not an executable"
    for verb in build status stop; do
        "$BLOCKMIRROR_BIN" "$verb" --help >/dev/null 2>&1 \
            || die "$BLOCKMIRROR_BIN has no '$verb' verb (this benchmark needs build, status --json and stop; or leave blockmirror out of TARGETS)"
    done
    # Not `| grep -q`: it exits at the first match, and the help's writer then dies of SIGPIPE,
    # which pipefail turns into a failure now and then.
    [[ $("$BLOCKMIRROR_BIN" build --help 2>&1) == *--run-dir* ]] \
        || die "$BLOCKMIRROR_BIN build has no --run-dir option (the control socket is needed for status and stop)"
    if [[ -z $BM_START ]]; then
        if "$BLOCKMIRROR_BIN" add --help >/dev/null 2>&1; then BM_START=add; else BM_START=build; fi
    elif [[ $BM_START == add ]]; then
        "$BLOCKMIRROR_BIN" add --help >/dev/null 2>&1 || die "$BLOCKMIRROR_BIN has no 'add' verb: use BM_START=build"
    fi
fi

# ---------------------------------------------------------------- files
log "creating OLD: $SIZE ($SIZE_BYTES bytes) of random data in $WORK"
head -c "$SIZE_BYTES" /dev/urandom >"$OLD"
sync "$OLD"
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$OLD"
mkdir -p "$RUN"

reset_new() {  # a fresh NEW, allocated (as a disk would be) but never written: it reads as zeros
    rm -f "$NEW"
    fallocate -l "$SIZE_BYTES" "$NEW" 2>/dev/null || truncate -s "$SIZE_BYTES" "$NEW"
}

sample() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }
fail() { log "FAILED: $*"; FAILURES=$((FAILURES + 1)); }
json_get() { python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]: v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$@"; }
calc() { python3 -c "print($1)"; }

verify() {  # verify WHAT: NEW must equal OLD
    ((VERIFY)) || return 0
    if fg_run python3 "$HELPER" verify "$OLD" "$NEW" 2>>"$WORK/verify.err"; then
        log "  $1: NEW equals OLD"
    else
        tail -1 "$WORK/verify.err" >&2
        fail "$1: NEW is not a copy of OLD"
    fi
}

# wait_nbd URI LOGFILE PID: until the export answers with the right size.
wait_nbd() {
    local uri=$1 logf=$2 pid=$3 size deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || { log "the daemon exited before its export was ready; tail of $logf:"; log_tail "$logf"; return 1; }
        if size=$(nbdinfo --size "$uri" 2>/dev/null); then
            [[ $size == "$SIZE_BYTES" ]] && return 0
            log "$uri exports $size bytes, OLD has $SIZE_BYTES"
            return 1
        fi
        sleep 0.05
    done
    log "$uri not ready after ${READY_TIMEOUT}s; tail of $logf:"
    log_tail "$logf"
    return 1
}

# run_4k TARGET ROUND URI|"": 4k randwrite QD32 for RUNTIME s (raw: on OLD with libaio).
run_4k() {
    local target=$1 round=$2 uri=$3 out=$WORK/$1.r$2.4k.json value=
    local -a args=(--name=rw4k --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --runtime="$RUNTIME" --time_based
                   --output-format=json --randrepeat=0)
    if [[ -z $uri ]]; then
        args+=(--ioengine=libaio --direct=1 --filename="$OLD")
    else
        args+=(--ioengine=nbd --uri="$uri")
    fi
    if fg_run timeout --kill-after=10 $((RUNTIME * 3 + 60)) fio "${args[@]}" >"$out" 2>"$out.err"; then
        value=$(python3 "$FIO_HELPER" value "$out" write iops 2>>"$out.err") || value=
    fi
    if [[ -z $value ]]; then
        tail -5 "$out.err" >&2
        fail "$target 4k randwrite round $round"
        sample "$round" "$target" randwrite4k_iops -
    else
        log "  $target 4k randwrite QD32: $value IOPS"
        sample "$round" "$target" randwrite4k_iops "$value"
    fi
}

# start_load URI TAG: fio 64k randwrite QD8 through the export until stop_fio.
start_load() {
    local uri=$1 tag=$2
    rm -f "$WORK/$tag"_bw.*.log
    fio --name=load --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --iodepth=8 --numjobs=1 \
        --time_based --runtime=$((LOAD_TIMEOUT + SYNC_TIMEOUT + 120)) --randrepeat=0 \
        --write_bw_log="$WORK/$tag" --log_avg_msec=100 --log_unix_epoch=1 \
        --output-format=json --output="$WORK/$tag.fio.json" >"$WORK/$tag.fio.out" 2>"$WORK/$tag.fio.err" &
    FIO_PID=$!
}

# load_result TARGET ROUND TAG START END: stops fio and records its MiB/s within [START, END].
load_result() {
    local target=$1 round=$2 tag=$3 start=$4 end=$5 w mibs
    if [[ -n $FIO_PID ]] && ! kill -0 "$FIO_PID" 2>/dev/null; then
        log "fio (load) ended before the recovery did:"
        tail -5 "$WORK/$tag.fio.err" >&2
    fi
    stop_fio
    if w=$(python3 "$HELPER" window --fio-json "$WORK/$tag.fio.json" --bw-log "$WORK/${tag}_bw.1.log" \
        --start "$start" --end "$end" 2>>"$WORK/$tag.fio.err") && mibs=$(python3 -c 'import json, sys; print(round(json.loads(sys.argv[1])["mibs"], 1))' "$w"); then
        log "  $target foreground fio 64k randwrite QD8 during the recovery: $mibs MiB/s"
        sample "$round" "$target" load_fg_mibs "$mibs"
    else
        tail -5 "$WORK/$tag.fio.err" >&2
        fail "$target: no result from the load fio in round $round"
        sample "$round" "$target" load_fg_mibs -
    fi
    # For reference: the same fio in the FIO_WARMUP s before the recovery started (none if it
    # could not run before, as with BM_START=build).
    if w=$(python3 "$HELPER" window --fio-json "$WORK/$tag.fio.json" --bw-log "$WORK/${tag}_bw.1.log" \
        --start "$(calc "$start - $FIO_WARMUP")" --end "$start" 2>/dev/null) \
        && mibs=$(python3 -c 'import json, sys; print(round(json.loads(sys.argv[1])["mibs"], 1))' "$w" 2>/dev/null); then
        sample "$round" "$target" load_pre_mibs "$mibs"
    fi
}

# ---------------------------------------------------------------- raw
raw_round() {
    local r=$1 t0 t1 secs
    local out=$WORK/raw.r$r.copy.json
    reset_new
    # The limit: what the disk does reading OLD and writing NEW at once, as a pipelined copy would.
    if fg_run timeout --kill-after=10 $((SYNC_TIMEOUT + 60)) fio --output-format=json --ioengine=libaio --direct=1 --bs=1M --iodepth=16 \
        --size="$SIZE_BYTES" --name=read-old --rw=read --filename="$OLD" \
        --name=write-new --rw=write --filename="$NEW" >"$out" 2>"$out.err" \
        && secs=$(python3 "$HELPER" copy-time "$out" "$SIZE_BYTES" 2>>"$out.err"); then
        log "  raw fio read OLD + write NEW at once (1M QD16 each): $secs s"
        sample "$r" raw copy_fio_s "$secs"
    else
        tail -5 "$out.err" >&2
        fail "raw fio copy, round $r"
        sample "$r" raw copy_fio_s -
    fi
    reset_new
    t0=$EPOCHREALTIME
    if fg_run dd if="$OLD" of="$NEW" bs="$DD_BS" iflag=direct oflag=direct conv=notrunc status=none 2>"$WORK/dd.err"; then
        t1=$EPOCHREALTIME
        secs=$(calc "round($t1 - $t0, 3)")
        log "  raw dd copy (bs=$DD_BS): $secs s"
        sample "$r" raw copy_dd_s "$secs"
    else
        cat "$WORK/dd.err" >&2
        fail "dd copy, round $r"
        sample "$r" raw copy_dd_s -
    fi
    run_4k raw "$r" ""
}

# ---------------------------------------------------------------- qemu-storage-daemon
start_qsd() {
    rm -f "$QMP_SOCK" "$QSD_SOCK"
    echo "=== $(date +%T) start ===" >>"$WORK/qsd.log"
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=sf,filename=$OLD,cache.direct=on,aio=native" \
        --blockdev driver=raw,node-name=src,file=sf \
        --blockdev "driver=file,node-name=df,filename=$NEW,cache.direct=on,aio=native" \
        --blockdev driver=raw,node-name=dst,file=df \
        --nbd-server "addr.type=unix,addr.path=$QSD_SOCK" \
        --export type=nbd,id=e0,node-name=src,writable=on \
        --chardev "socket,path=$QMP_SOCK,server=on,wait=off,id=q0" --monitor chardev=q0 \
        >>"$WORK/qsd.log" 2>&1 &
    QSD_PID=$!
    QSD_URI="nbd+unix:///src?socket=$QSD_SOCK"
    wait_nbd "$QSD_URI" "$WORK/qsd.log" "$QSD_PID"
}

# qsd_finish WHAT: cancel the ready job (NEW stays a consistent copy), stop qsd, compare.
qsd_finish() {
    if ! fg_run python3 "$HELPER" qsd-cancel --qmp "$QMP_SOCK" --timeout "$STOP_TIMEOUT"; then
        fail "qsd: $1: block-job-cancel of the ready job failed"
        stop_qsd
        return
    fi
    stop_qsd
    ((STOP_RC == 0)) || log "warning: qemu-storage-daemon exited with status $STOP_RC"
    verify "qsd $1"
}

qsd_round() {
    local r=$1 out finished secs start end
    local -a mirror_args=(--qmp "$QMP_SOCK" --copy-mode "$QSD_COPY_MODE" --speed "$QSD_SPEED")
    # idle recovery, then 4k randwrite on the ready mirror
    reset_new
    if ! start_qsd; then fail "qsd did not start (round $r)"; stop_qsd; sample "$r" qsd idle_s -; return; fi
    out=$WORK/qsd.r$r.idle.json
    if fg_run python3 "$HELPER" qsd-mirror "${mirror_args[@]}" --start-mirror --timeout "$SYNC_TIMEOUT" --out "$out"; then
        secs=$(json_get "$out" seconds)
        if [[ $(json_get "$out" "done") == True ]]; then
            log "  qsd idle recovery: $(calc "round($secs, 3)") s to ready"
            sample "$r" qsd idle_s "$secs"
            run_4k qsd "$r" "$QSD_URI"
            qsd_finish "idle recovery"
        else
            fail "qsd idle recovery not ready after ${SYNC_TIMEOUT}s"
            sample "$r" qsd idle_s ">$secs"
            stop_qsd
        fi
    else
        fail "qsd blockdev-mirror (round $r); tail of $WORK/qsd.log:"
        log_tail "$WORK/qsd.log"
        sample "$r" qsd idle_s -
        stop_qsd
    fi

    # recovery under load
    reset_new
    if ! start_qsd; then fail "qsd did not start (round $r)"; stop_qsd; sample "$r" qsd load_s -; return; fi
    out=$WORK/qsd.r$r.load.json
    start_load "$QSD_URI" "qsd.r$r.load"
    sleep "$FIO_WARMUP"
    if ! fg_run python3 "$HELPER" qsd-mirror "${mirror_args[@]}" --start-mirror --timeout "$LOAD_TIMEOUT" --out "$out"; then
        stop_fio
        fail "qsd blockdev-mirror under load (round $r); tail of $WORK/qsd.log:"
        log_tail "$WORK/qsd.log"
        sample "$r" qsd load_s -
        stop_qsd
        return
    fi
    start=$(json_get "$out" start) end=$(json_get "$out" end) secs=$(json_get "$out" seconds) finished=$(json_get "$out" "done")
    load_result qsd "$r" "qsd.r$r.load" "$start" "$end"
    if [[ $finished == True ]]; then
        log "  qsd recovery under load: $(calc "round($secs, 3)") s to ready"
        sample "$r" qsd load_s "$secs"
    else
        local off len
        off=$(json_get "$out" offset) len=$(json_get "$out" len)
        log "  qsd recovery under load: not ready after ${LOAD_TIMEOUT}s ($off of $len bytes); load stopped"
        sample "$r" qsd load_s ">$secs"
        sample "$r" qsd load_pct_at_timeout "$(calc "round(100 * $off / $len, 1)")"
        sample "$r" qsd load_copy_mibs_at_timeout "$(calc "round($off / 1048576 / $secs, 1)")"
        if ! fg_run python3 "$HELPER" qsd-mirror --qmp "$QMP_SOCK" --start "$start" --timeout $((LOAD_TIMEOUT + SYNC_TIMEOUT)) --out "$out.rest" \
            || [[ $(json_get "$out.rest" "done") != True ]]; then
            fail "qsd recovery not done after the load stopped (round $r)"
            stop_qsd
            return
        fi
    fi
    qsd_finish "recovery under load"
}

# ---------------------------------------------------------------- blockmirror
start_bm() {  # start_bm TARGET: the daemon in the background; sets BM_PID (and BM_T0, its start)
    rm -f "$BM_SOCK" "$WORK/blockmirror.out"
    echo "=== $(date +%T) start (target $1) ===" >>"$WORK/blockmirror.log"
    BM_T0=$EPOCHREALTIME
    "$BLOCKMIRROR_BIN" build "$NAME" --source "$OLD" --target "$1" --listen "unix:$BM_SOCK" --run-dir "$RUN" \
        "${bm_args[@]}" >"$WORK/blockmirror.out" 2>>"$WORK/blockmirror.log" &
    BM_PID=$!
}

wait_bm_uri() {  # sets BM_URI from the first line blockmirror prints
    local deadline=$((SECONDS + READY_TIMEOUT))
    BM_URI=
    while ((SECONDS < deadline)); do
        if [[ -s $WORK/blockmirror.out ]] && [[ $(wc -l <"$WORK/blockmirror.out") -ge 1 ]]; then
            BM_URI=$(head -1 "$WORK/blockmirror.out")
            [[ $BM_URI == nbd+unix://* ]] || { log "blockmirror printed an unexpected URI: '$BM_URI'"; return 1; }
            wait_nbd "$BM_URI" "$WORK/blockmirror.log" "$BM_PID"
            return
        fi
        kill -0 "$BM_PID" 2>/dev/null || break
        sleep 0.02
    done
    log "blockmirror printed no URI; tail of $WORK/blockmirror.log:"
    log_tail "$WORK/blockmirror.log"
    return 1
}

# bm_begin [LOADTAG]: a running mirror whose recovery has started at BM_T0. BM_START=add: the
# daemon starts degraded (--target missing), the load (if any) runs FIO_WARMUP s through its
# export, then `blockmirror add` starts the recovery (as blockdev-mirror does for qsd).
# BM_START=build: the daemon starts with --target NEW (recovery from its start); the load can
# only connect once it listens.
bm_begin() {
    local tag=${1:-}
    if [[ $BM_START == add ]]; then
        start_bm missing
        wait_bm_uri || return 1
        if [[ -n $tag ]]; then
            start_load "$BM_URI" "$tag"
            sleep "$FIO_WARMUP"
            kill -0 "$FIO_PID" 2>/dev/null || { log "the load fio died:"; tail -5 "$WORK/$tag.fio.err" >&2; return 1; }
        fi
        BM_T0=$EPOCHREALTIME
        if ! "$BLOCKMIRROR_BIN" add "$NAME" "$NEW" --run-dir "$RUN" >>"$WORK/blockmirror.log" 2>&1; then
            log "blockmirror add $NAME $NEW failed; tail of $WORK/blockmirror.log:"
            log_tail "$WORK/blockmirror.log"
            return 1
        fi
    else
        start_bm "$NEW"
        wait_bm_uri || return 1
        [[ -z $tag ]] || start_load "$BM_URI" "$tag"
    fi
}

# bm_wait OUT TIMEOUT: polls status until in-sync (TIMEOUT s after BM_T0 at most).
bm_wait() {
    fg_run python3 "$HELPER" bm-wait --bin "$BLOCKMIRROR_BIN" --name "$NAME" --run-dir "$RUN" --start "$BM_T0" \
        --size "$SIZE_BYTES" --timeout "$2" --pid "$BM_PID" --out "$1"
}

bm_finish() {  # bm_finish WHAT: blockmirror stop, then compare
    stop_bm
    [[ -n $BM_STOP_LINE ]] && log "  blockmirror stop: $BM_STOP_LINE"
    if ((STOP_RC != 0)); then
        fail "blockmirror ($1) exited with status $STOP_RC; tail of $WORK/blockmirror.log:"
        log_tail "$WORK/blockmirror.log"
    fi
    if ! grep -q ': in sync' "$WORK/blockmirror.out"; then
        fail "blockmirror ($1) did not report in sync when it stopped: $(tail -1 "$WORK/blockmirror.out")"
    fi
    verify "blockmirror $1"
}

bm_round() {
    local r=$1 out finished secs end
    # idle recovery, then 4k randwrite on the in-sync mirror
    reset_new
    out=$WORK/blockmirror.r$r.idle.json
    if bm_begin && bm_wait "$out" "$SYNC_TIMEOUT"; then
        secs=$(json_get "$out" seconds)
        if [[ $(json_get "$out" "done") == True ]]; then
            log "  blockmirror idle recovery: $(calc "round($secs, 3)") s to in-sync (±$(calc "round($(json_get "$out" resolution) / 2, 3)") s, $(json_get "$out" polls) polls)"
            sample "$r" blockmirror idle_s "$secs"
            sample "$r" blockmirror idle_poll_resolution_s "$(json_get "$out" resolution)"
            run_4k blockmirror "$r" "$BM_URI"
            bm_finish "idle recovery"
        else
            fail "blockmirror idle recovery not in sync after ${SYNC_TIMEOUT}s: $(json_get "$out" status)"
            sample "$r" blockmirror idle_s ">$secs"
            stop_bm
        fi
    else
        fail "blockmirror idle recovery (round $r); tail of $WORK/blockmirror.log:"
        log_tail "$WORK/blockmirror.log"
        sample "$r" blockmirror idle_s -
        stop_bm
    fi

    # recovery under load
    reset_new
    out=$WORK/blockmirror.r$r.load.json
    local tag=blockmirror.r$r.load
    if ! bm_begin "$tag" || ! bm_wait "$out" "$LOAD_TIMEOUT"; then
        stop_fio
        fail "blockmirror recovery under load (round $r); tail of $WORK/blockmirror.log:"
        log_tail "$WORK/blockmirror.log"
        sample "$r" blockmirror load_s -
        stop_bm
        return
    fi
    secs=$(json_get "$out" seconds) end=$(json_get "$out" end) finished=$(json_get "$out" "done")
    load_result blockmirror "$r" "$tag" "$BM_T0" "$end"
    # When fio's first write landed, relative to the start of the recovery (< 0: load was on before).
    local first
    first=$(head -1 "$WORK/${tag}_bw.1.log" 2>/dev/null | cut -d, -f1)
    [[ -z $first ]] || sample "$r" blockmirror load_fio_delay_s "$(calc "round($first / 1000 - 0.1 - $BM_T0, 3)")"
    if [[ $finished == True ]]; then
        log "  blockmirror recovery under load: $(calc "round($secs, 3)") s to in-sync"
        sample "$r" blockmirror load_s "$secs"
    else
        local total dirty copied
        total=$(json_get "$out" status regionsTotal) dirty=$(json_get "$out" status regionsDirty) copied=$(json_get "$out" status bytesCopied)
        log "  blockmirror recovery under load: not in sync after ${LOAD_TIMEOUT}s ($dirty of $total regions dirty, $copied bytes copied, copy speed $(json_get "$out" status speedKiBps)$(json_get "$out" status speedBytesPerSecond) (KiB/s or B/s, as status names it)); load stopped"
        sample "$r" blockmirror load_s ">$secs"
        [[ -n $total && -n $dirty ]] && sample "$r" blockmirror load_pct_at_timeout "$(calc "round(100 * (1 - $dirty / $total), 1)")"
        [[ -n $copied ]] && sample "$r" blockmirror load_copy_mibs_at_timeout "$(calc "round($copied / 1048576 / $secs, 1)")"
        if ! bm_wait "$out.rest" $((LOAD_TIMEOUT + SYNC_TIMEOUT)) || [[ $(json_get "$out.rest" "done") != True ]]; then
            fail "blockmirror not in sync after the load stopped (round $r)"
            stop_bm
            return
        fi
        log "  blockmirror in sync $(calc "round($(json_get "$out.rest" seconds), 3)") s after the recovery started (idle after ${LOAD_TIMEOUT}s)"
    fi
    bm_finish "recovery under load"
}

# ---------------------------------------------------------------- run
: >"$SAMPLES"
n=${#targets[@]}
log "targets: ${targets[*]}; $REPEAT rounds; $SIZE files; 4k runs of ${RUNTIME}s; load timeout ${LOAD_TIMEOUT}s; about $(((REPEAT * (${#targets[@]} * RUNTIME + 20 * SIZE_BYTES / 1073741824 + 10)) / 60 + 1)) min"
for ((round = 1; round <= REPEAT; round++)); do
    for ((i = 0; i < n; i++)); do
        t=${targets[$(((i + round - 1) % n))]}
        log "round $round/$REPEAT: $t"
        case $t in
            raw) raw_round "$round" ;;
            qsd) qsd_round "$round" ;;
            blockmirror) bm_round "$round" ;;
        esac
    done
done

if want blockmirror && [[ -s $WORK/blockmirror.log ]] && grep -qiE 'warn|error|critical|fatal' "$WORK/blockmirror.log"; then
    log "note: blockmirror logged warnings/errors (last ones):"
    grep -iE 'warn|error|critical|fatal' "$WORK/blockmirror.log" | tail -10 >&2
fi

# ---------------------------------------------------------------- report
NOTES+=("NEW is a fresh fallocated (unwritten) file before every recovery; OLD keeps the writes of earlier runs.")
want qsd && NOTES+=("qsd: time from the blockdev-mirror command (qsd already running, its export up) to BLOCK_JOB_READY; under load fio runs ${FIO_WARMUP}s through the export before the command.")
if want blockmirror; then
    if [[ $BM_START == add ]]; then
        NOTES+=("blockmirror: started degraded (build --target missing); time from 'blockmirror add NAME NEW' to the status poll that first saw in-sync (± half the poll interval: see idle_poll_resolution_s); under load fio runs ${FIO_WARMUP}s through the export before the add.")
    else
        NOTES+=("blockmirror (BM_START=build): time from the start of 'build --target NEW' (start-up included) to the status poll that first saw in-sync; under load fio connects only once the export listens, so the first part of the copy runs unloaded (load_fio_delay_s in the JSON).")
    fi
fi
NOTES+=("Foreground MiB/s counts fio's writes within the recovery window only (fio's 100 ms bandwidth log).")
NOTES+=("2-core machine: figures are noisy (PEERS.md: +-30% run to run); compare ratios from the same run.")
notes_json=$(printf '%s\n' "${NOTES[@]}" | python3 -c 'import json, sys; print(json.dumps([l.rstrip("\n") for l in sys.stdin if l.strip()]))')
python3 - "$WORK/meta.json" <<EOF
import json, subprocess, sys, os, platform, datetime
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        return None
meta = {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "size_bytes": $SIZE_BYTES, "repeat": $REPEAT, "runtime_s": $RUNTIME, "load_timeout_s": $LOAD_TIMEOUT,
    "targets": "${targets[*]}".split(),
    "qsd_copy_mode": "$QSD_COPY_MODE", "qsd_speed": $QSD_SPEED, "blockmirror_args": "$BM_ARGS",
    "blockmirror_start": "$BM_START" or None,
    "dd_bs": "$DD_BS", "verify": bool($VERIFY), "fio_warmup_s": $FIO_WARMUP,
    "workdir_fs": out("stat", "-f", "-c", "%T", "$WORKDIR_BASE"),
    "kernel": platform.release(), "cpus": os.cpu_count(),
    "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    "fio": out("fio", "--version"),
    "qemu_storage_daemon": out("qemu-storage-daemon", "--version") if "qsd" in "${targets[*]}".split() else None,
    "blockmirror_bin": "${BLOCKMIRROR_BIN:-}" or None,
    "git_commit": out("git", "-C", "$ROOT", "rev-parse", "HEAD"),
    "git_dirty": bool(subprocess.run(["git", "-C", "$ROOT", "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True).stdout.strip()),
    "failed_runs": $FAILURES,
    "notes": json.loads('''$notes_json'''),
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
mkdir -p "$(dirname "$RESULTS")"
echo
python3 "$HELPER" report "$SAMPLES" "$WORK/meta.json" "$RESULTS"
echo
echo "JSON results: $RESULTS"
if ((FAILURES)); then
    log "$FAILURES run(s) failed or a copy did not compare equal (see the messages above)"
    exit 1
fi
