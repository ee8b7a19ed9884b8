# shellcheck shell=bash
# What the benchmark scripts share: their work directory (checked before anything is written;
# at the end removed, or kept with KEEP_WORK=1, the logs of a failed run copied next to RESULTS)
# and stopping a process. Sourced; uses WORK, WORKDIR_BASE, RESULTS, KEEP_WORK, FAILURES,
# STOP_TIMEOUT and the caller's log and die.

# check_workdir BYTES WHAT: O_DIRECT works in WORK (tmpfs such as /dev/shm may refuse it) and
# BYTES plus 256 MiB are free there; WHAT names the files in the message.
check_workdir() {
    dd if=/dev/zero of="$WORK/.odirect-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null \
        || die "$WORKDIR_BASE ($(stat -f -c %T "$WORK")) refuses O_DIRECT: set WORKDIR_BASE to a disk filesystem"
    rm -f "$WORK/.odirect-probe"
    local avail
    avail=$(df -B1 --output=avail "$WORK" | tail -1)
    ((avail > $1 + 268435456)) || die "not enough space in $WORKDIR_BASE for $2 (+256 MiB)"
}

# finish_workdir RC: after a failure (RC != 0 or FAILURES) keep the logs, outputs and results
# in RESULTS-logs; then remove WORK unless KEEP_WORK=1.
finish_workdir() {
    if (($1 != 0 || FAILURES != 0)) && [[ -d $WORK ]] && [[ $KEEP_WORK != 1 ]]; then
        local keep="${RESULTS%.json}-logs" file kept=0
        for file in "$WORK"/*.log "$WORK"/*.json "$WORK"/*.err "$WORK"/*.out "$WORK"/*.tsv "$WORK"/*.fio.*; do
            [[ -f $file ]] || continue
            mkdir -p "$keep" && cp "$file" "$keep"/ && kept=1
        done
        ((kept)) && log "logs of the failed run kept in $keep"
    fi
    if [[ $KEEP_WORK == 1 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}

# stop_pid PID WHAT SIGNAL: signal, wait STOP_TIMEOUT s, then SIGKILL; sets STOP_RC (the exit
# status, 137 when it had to be killed).
stop_pid() {
    local pid=$1 what=$2 sig=$3 i
    STOP_RC=0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "warning: $what (pid $pid) still running ${STOP_TIMEOUT}s after SIG$sig: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        STOP_RC=137
    fi
    local rc=0
    wait "$pid" 2>/dev/null || rc=$?
    ((STOP_RC)) || STOP_RC=$rc
}
