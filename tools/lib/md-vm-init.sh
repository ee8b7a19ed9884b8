#!/bin/busybox sh
# shellcheck shell=dash
# /init of the kernel-md VM that tools/md-vm.sh builds (busybox ash; runs under qemu TCG).
#
# Loads the modules listed in /mods/order, runs the scenario named by bm_scenario= on the kernel
# command line, prints its results as "@@ KEY value" lines on the console, writes its files (fio
# output, logs, captured fixtures) as a tar onto the out disk (bm_out=vdX), and powers off.
# Disks: vda = OLD (random data), vdb = NEW (zeros, same size); the fixtures scenario also gets
# vdc and vdd with two partitions each (for resync=DELAYED).
#
# During each recovery a poller prints "%% PROGRESS UPTIME DONE TOTAL" lines every 0.5 s (md and
# md-blockmirror: sync_completed in sectors; engine and engine-nbd: clean regions from the engine's
# metrics endpoint), unless bm_progress=0.
#
# Scenarios:
#   md              kernel md through mdadm: --build vda missing, fio on /dev/md0 (libaio,
#                   O_DIRECT), --add vdb while it writes, wait for idle, check, --stop
#   md-blockmirror  the same through `blockmirror VERB md0 --backend md`
#   engine          the same with the blockmirror engine: build m0 degraded, fio through its NBD
#                   export (fio's nbd engine over a unix socket), add, wait, check, stop
#   engine-nbd      the engine as md is used: the kernel's NBD client (nbd-client -unix, netlink,
#                   bm_nbd_conns connections) makes its export /dev/nbd0, and md's fio job (libaio,
#                   O_DIRECT) writes there; add, wait, check, nbd-client -d, stop
#   fixtures        /proc/mdstat, mdadm --detail and md sysfs in named states, into /out/fixtures
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin MDADM_NO_UDEV=1 HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /tmp /out /root /dev/shm /run/mdadm

# Shell builtins only (read, not cut/cat/awk) in what polls: every fork costs under emulation.
up() { local u rest; read -r u rest < /proc/uptime; echo "$u"; }
# nap SECONDS: sleep without forking a sleep process (a timed read of a FIFO nobody writes; the
# read times out, nap succeeds like sleep): the pollers below nap every 0.05-0.5 s, and forks
# would take guest CPU from what is measured.
mkfifo /run/nap
nap() { read -r -t "$1" _ <> /run/nap; return 0; }
sysfs() { local v; read -r v < "$1"; echo "$v"; }
log() { echo "-- t=$(up) $*"; }
mark() { echo "@@ $*"; }
FAILED=0
fail() { echo "@@ FAIL $*"; FAILED=1; }
param() {
    for w in $(cat /proc/cmdline); do
        case $w in "$1="*) echo "${w#*=}"; return ;; esac
    done
    echo "$2"
}
sub() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }

SCENARIO=$(param bm_scenario md)
OUT_DISK=/dev/$(param bm_out vdc)
FIO_MB=$(param bm_fio_mb 64)
FIO_BS=$(param bm_fio_bs 64k)
FIO_QD=$(param bm_fio_qd 8)
FIO_SEED=$(param bm_fio_seed 1234)
MD_SPEED_MAX=$(param bm_md_speed_max "")
GUEST_MD5=$(param bm_md5 0)
TIMEOUT=$(param bm_timeout 500)
BM_ARGS=$(param bm_args "" | tr , ' ')
PROGRESS=$(param bm_progress 1)
METRICS=127.0.0.1:9100
NBD_CONNS=$(param bm_nbd_conns 1)
NBD_SCHED=$(param bm_nbd_sched "")
RUNDIR=/run/blockmirror

# finish: files onto the out disk, the status marker, power off.
finish() {
    dmesg > /out/dmesg.txt 2>&1
    # a process that died of a signal the kernel logs (a Swift trap is "trap invalid opcode")
    grep -E 'traps:|segfault at|Out of memory' /out/dmesg.txt | while read -r line; do
        echo "@@ FAIL kernel log: $line"
    done
    grep -qE 'traps:|segfault at|Out of memory' /out/dmesg.txt && FAILED=1
    # the kernel NBD client: a request that took 30 s (it then retries it on another connection
    # or fails it) or a connection that broke
    local nbd_trouble='nbd[0-9]+: (Connection timed out|Possible stuck request|Receive control failed|Dead connection|Send control failed)'
    grep -E "$nbd_trouble" /out/dmesg.txt | head -3 | while read -r line; do echo "@@ FAIL kernel log: $line"; done
    grep -qE "$nbd_trouble" /out/dmesg.txt && FAILED=1
    cat /proc/mdstat > /out/mdstat-final.txt 2>&1
    tar -cf "$OUT_DISK" -C /out . || fail "tar onto $OUT_DISK"
    sync
    mark STATUS "$FAILED"
    poweroff -f
}

log "init (kernel $(uname -r)), scenario $SCENARIO"
mark SCENARIO "$SCENARIO"
mark KERNEL "$(uname -r)"
for m in $(cat /mods/order); do insmod "/mods/$m" || fail "insmod $m"; done
n=0
while [ ! -b "$OUT_DISK" ] || [ ! -b /dev/vdb ]; do
    n=$((n + 1)); [ $n -gt 100 ] && break; sleep 0.1
done
log "modules loaded; disks: $(ls /dev/vd* 2>/dev/null | tr '\n' ' ')"
[ -b /dev/vda ] && [ -b /dev/vdb ] && [ -b "$OUT_DISK" ] || { fail "virtio disks missing"; finish; }
ip link set lo up 2>/dev/null
# A watchdog, so that a hung step still ends with the files saved and a status.
( sleep "$TIMEOUT"; echo "@@ FAIL guest watchdog: scenario $SCENARIO still running after $TIMEOUT s"
  dmesg > /out/dmesg.txt 2>&1; tar -cf "$OUT_DISK" -C /out . ; sync; echo "@@ STATUS 1"; poweroff -f ) &

SIZE_BYTES=$(($(cat /sys/block/vda/size) * 512))
mark SIZE_BYTES "$SIZE_BYTES"
mark MDADM "$(mdadm --version 2>&1)"
mark MD_SPEED_LIMITS_DEFAULT "min=$(cat /proc/sys/dev/raid/speed_limit_min 2>/dev/null) max=$(cat /proc/sys/dev/raid/speed_limit_max 2>/dev/null)"

# --- helpers ---------------------------------------------------------------------------------

# vda's completed writes (field 5 of the stat file): moves once fio's first writes landed.
vda_writes() { local a b c d e rest; read -r a b c d e rest < /sys/block/vda/stat; echo "$e"; }

# The copy as the disk sees it, whatever drives it: a background poller (every 0.05 s) notes when
# vdb's written-sectors count first and last moved, until /tmp/vdb.stop exists. With fio done
# before the recovery ends, first..last is the copy. copy_watch_end marks COPY_S.
copy_watch_start() {
    rm -f /tmp/vdb.stop /tmp/vdb.span
    ( local a b c d e f g rest prev first="" last="" u
      read -r a b c d e f prev rest < /sys/block/vdb/stat
      while [ ! -e /tmp/vdb.stop ]; do
          # shellcheck disable=SC2034 # fields 1-6 are not needed
          read -r a b c d e f g rest < /sys/block/vdb/stat
          if [ "$g" != "$prev" ]; then
              read -r u rest < /proc/uptime
              [ -z "$first" ] && first=$u
              last=$u; prev=$g
          fi
          nap 0.05
      done
      echo "$first $last" > /tmp/vdb.span ) &
    COPY_WATCH=$!
}
copy_watch_end() {
    local first last
    touch /tmp/vdb.stop; wait "$COPY_WATCH"
    read -r first last < /tmp/vdb.span
    if [ -n "$first" ]; then
        mark COPY_SPAN "t=$first..$last"
        mark COPY_S "$(sub "$first" "$last")"
    else
        fail "no write reached vdb during the recovery"
    fi
}
# The recovery's progress over time (md: sync_completed of md0, in sectors; engine: clean regions
# from its metrics endpoint, one busybox wget a poll: the poller's only fork, counted in
# GUEST_CPU_BUSY, its request in DAEMON_CPU), every 0.5 s as "%% PROGRESS UPTIME DONE TOTAL"
# console lines, until /tmp/progress.stop exists. Nothing with bm_progress=0.
progress_watch_start() {
    rm -f /tmp/progress.stop
    PROGRESS_WATCH=""
    [ "$PROGRESS" = 1 ] || return 0
    ( local u rest d s t name value
      while [ ! -e /tmp/progress.stop ]; do
          read -r u rest < /proc/uptime
          if [ "$1" = engine ]; then
              d=""; t=""
              wget -q -O /tmp/metrics.txt "http://$METRICS/metrics" 2>/dev/null
              while read -r name value; do
                  case $name in
                      blockmirror_regions_dirty*) d=${value%.*} ;;
                      "blockmirror_regions{"*) t=${value%.*} ;;
                  esac
              done < /tmp/metrics.txt
              [ -n "$t" ] && [ -n "$d" ] && echo "%% PROGRESS $u $((t - d)) $t"
          else
              read -r d s t < /sys/block/md0/md/sync_completed
              [ "$s" = / ] && echo "%% PROGRESS $u $d $t"
          fi
          nap 0.5
      done ) &
    PROGRESS_WATCH=$!
}
progress_watch_end() {
    touch /tmp/progress.stop
    [ -n "$PROGRESS_WATCH" ] && wait "$PROGRESS_WATCH"
}
wait_writes_since() {
    local n=0
    while [ "$(vda_writes)" = "$1" ]; do
        n=$((n + 1)); [ $n -gt 1200 ] && return 1; nap 0.05
    done
}

md_progress() { echo "sync_action=$(sysfs /sys/block/$1/md/sync_action) sync_completed=$(sysfs /sys/block/$1/md/sync_completed) sync_speed=$(sysfs /sys/block/$1/md/sync_speed)"; }

# wait_recovered MD SECONDS: polls (0.1 s) until MD is no longer degraded and sync_action is idle.
wait_recovered() {
    local n=0
    while [ "$(sysfs /sys/block/$1/md/degraded)" != 0 ] || [ "$(sysfs /sys/block/$1/md/sync_action)" != idle ]; do
        [ $((n % 50)) = 0 ] && log "$1 $(md_progress $1)"
        n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && return 1
        nap 0.1
    done
}

# wait_idle MD SECONDS: polls (0.1 s) until sync_action is idle (a check shows "check" as soon as
# it is requested, so there is no window where it reads idle before it started).
wait_idle() {
    local n=0
    while [ "$(sysfs /sys/block/$1/md/sync_action)" != idle ]; do
        [ $((n % 50)) = 0 ] && log "$1 $(md_progress $1)"
        n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && return 1
        nap 0.1
    done
}

# fio_start TAG ARGS...: the load (FIO_MB MiB of FIO_BS random writes at QD FIO_QD) in the
# background. Seeded offsets (randommap: no block twice) and offset-stamped data, so that every
# scenario ends with the same bytes on disk.
fio_start() {
    FIO_TAG=$1; shift
    ( echo "$(up)" > /tmp/fio.t0
      fio --name=load --rw=randwrite --bs="$FIO_BS" --iodepth="$FIO_QD" --io_size="${FIO_MB}M" \
          --randseed="$FIO_SEED" --verify=pattern --verify_pattern=0xb10c%o --do_verify=0 \
          --output-format=json --output="/out/fio-$FIO_TAG.json" "$@" > "/out/fio-$FIO_TAG.log" 2>&1
      echo $? > /tmp/fio.rc
      echo "$(up)" > /tmp/fio.t1 ) &
    FIO_PID=$!
}

# fio_result RECOVERY_END: waits for fio, marks FIO_MIBS, FIO_S, FIO_ENDED_FIRST.
fio_result() {
    wait "$FIO_PID"
    local rc bw rt
    rc=$(cat /tmp/fio.rc 2>/dev/null)
    if [ "$rc" != 0 ]; then
        fail "fio exited ${rc:-?}: $(tail -3 /out/fio-$FIO_TAG.log | tr '\n' ' ')"
        return
    fi
    bw=$(awk '/"write" : \{/{w=1} w && /"bw_bytes"/{gsub(/[^0-9]/, ""); print; exit}' "/out/fio-$FIO_TAG.json")
    rt=$(awk '/"write" : \{/{w=1} w && /"runtime"/{gsub(/[^0-9]/, ""); print; exit}' "/out/fio-$FIO_TAG.json")
    mark FIO_MIBS "$(awk "BEGIN{printf \"%.1f\", $bw / 1048576}")"
    mark FIO_S "$(awk "BEGIN{printf \"%.2f\", $rt / 1000}")"
    mark FIO_SPAN "t=$(cat /tmp/fio.t0)..$(cat /tmp/fio.t1)"
    if awk "BEGIN{exit !($(cat /tmp/fio.t1) < $1)}"; then mark FIO_ENDED_FIRST yes; else mark FIO_ENDED_FIRST no; fi
}

# The CPU the recovery costs, from tick counters (USER_HZ = 100): cpu_start notes the guest's
# busy and total ticks (/proc/stat: all but idle and iowait) and, given a pid, its threads'
# utime + stime; cpu_end marks GUEST_CPU_BUSY (busy vCPUs on average, out of all of them),
# DAEMON_CPU (the vCPUs that process kept busy) and DAEMON_THREADS (that, by thread name: where
# the engine spends it). Under TCG a busy vCPU is a host core.
cpu_ticks() {
    # shellcheck disable=SC2034 # cpu is the line's label
    local cpu us ni sy id wa hi si st rest
    read -r cpu us ni sy id wa hi si st rest < /proc/stat
    echo "$((us + ni + sy + hi + si + st)) $((us + ni + sy + id + wa + hi + si + st))"
}
# thread_ticks PID: "tid name utime stime" of each of its threads (spaces in a name become _)
thread_ticks() {
    local f line tid name
    for f in /proc/"$1"/task/*/stat; do
        read -r line < "$f" 2>/dev/null || continue
        tid=${line%% *} name=${line#*(}
        name=${name%)*} line=${line##*) }
        # shellcheck disable=SC2086 # the fields after the name, split: utime and stime are 12, 13
        set -- $line
        echo "$tid ${name// /_} ${12} ${13}"
    done
}
cpu_start() {
    CPU_PID=$1 CPU_T0=$(up) CPU0=$(cpu_ticks)
    [ -n "$CPU_PID" ] && thread_ticks "$CPU_PID" > /tmp/threads.0
}
cpu_end() {
    local t1 now
    t1=$(up); now=$(cpu_ticks)
    mark GUEST_CPU_BUSY "$(echo "$CPU0 $now" | awk -v n="$(grep -c ^processor /proc/cpuinfo)" \
        '{printf "%.2f", ($3 - $1) * n / ($4 - $2 + 0.001)}')"
    [ -n "$CPU_PID" ] || return 0
    thread_ticks "$CPU_PID" > /tmp/threads.1
    # per thread name (threads of one name summed): vCPUs over the window, user + system (and
    # system alone); a thread started in the window counts from zero
    awk -v s="$(sub "$CPU_T0" "$t1")" '
        FNR == NR { u0[$1] = $3; s0[$1] = $4; next }
        { n = $2; us[n] += $3 - u0[$1]; sy[n] += $4 - s0[$1]; tu += $3 - u0[$1]; ts += $4 - s0[$1] }
        END { printf "DAEMON_CPU %.2f\n", (tu + ts) / 100 / s > "/tmp/threads.total"
              for (n in us) if (us[n] + sy[n] > 0)
                  printf "%s=%.2f(sys %.2f)\n", n, (us[n] + sy[n]) / 100 / s, sy[n] / 100 / s }' \
        /tmp/threads.0 /tmp/threads.1 | sort -t= -k2 -rn > /out/daemon-threads.txt
    mark "$(cat /tmp/threads.total)"
    mark DAEMON_THREADS "$(head -6 /out/daemon-threads.txt | tr '\n' ' ')"
}

recovery_marks() {   # recovery_marks T0 T1
    local s; s=$(sub "$1" "$2")
    mark RECOVERY_SPAN "t=$1..$2"
    mark RECOVERY_S "$s"
    mark RECOVERY_MIBS "$(awk "BEGIN{printf \"%.1f\", $SIZE_BYTES / 1048576 / $s}")"
}

# bm LOG ARGS...: blockmirror ARGS with its output in /out/LOG (its live bar would flood the
# serial console otherwise); the output is echoed, the exit status returned.
bm() {
    local logf=/out/$1; shift
    echo "\$ blockmirror $*    # t=$(up)" >> "$logf"
    blockmirror "$@" >> "$logf" 2>&1
    local rc=$?
    [ $rc != 0 ] && echo "(exit status $rc)" >> "$logf"
    echo "# t=$(up)" >> "$logf"
    return $rc
}
bm_last() { grep -v "^# t=" "/out/$1" | tail -n "${2:-1}"; }

guest_md5() {
    [ "$GUEST_MD5" = 1 ] || return 0
    local t0; t0=$(up)
    md5sum /dev/vda /dev/vdb > /tmp/md5
    mark GUEST_MD5_OLD "$(awk 'NR==1{print $1}' /tmp/md5)"
    mark GUEST_MD5_NEW "$(awk 'NR==2{print $1}' /tmp/md5)"
    log "md5sum of both disks took $(sub "$t0" "$(up)") s"
}

# The time blockmirror takes to start and exit under the emulation (every verb pays it).
# The first run pays for translating its code (TCG caches translations), later ones do not.
bm_startup() {
    local t0 t1
    t0=$(up)
    blockmirror --version > /out/version.txt 2>&1 || fail "blockmirror --version: $(cat /out/version.txt)"
    t1=$(up)
    blockmirror --version > /dev/null 2>&1
    mark BM_STARTUP_COLD_S "$(sub "$t0" "$t1")"
    mark BM_STARTUP_S "$(sub "$t1" "$(up)")"
    mark BM_VERSION "$(cat /out/version.txt)"
}

# --- md: kernel md through mdadm (MODE raw) or through blockmirror --backend md ---------------
sc_md() {
    local mode=$1 t0 t1 t2 t3 base out rc
    if [ -n "$MD_SPEED_MAX" ]; then echo "$MD_SPEED_MAX" > /proc/sys/dev/raid/speed_limit_max; fi
    mark SPEED_LIMITS "md min $(cat /proc/sys/dev/raid/speed_limit_min), max $(cat /proc/sys/dev/raid/speed_limit_max) KiB/s"
    log "build md0 (vda + missing)"
    if [ "$mode" = raw ]; then
        mdadm --build /dev/md0 --level=1 --raid-disks=2 /dev/vda missing || { fail "mdadm --build"; return; }
    else
        bm_startup
        bm verbs.log build md0 --backend md --source /dev/vda --target missing || { fail "blockmirror build md0 --backend md: $(bm_last verbs.log)"; return; }
        bm status-degraded.json status md0 --backend md --json || fail "blockmirror status (degraded): $(bm_last status-degraded.json)"
        grep -q '"state" *: *"degraded"' /out/status-degraded.json || fail "status after build is not degraded: $(cat /out/status-degraded.json | tr '\n' ' ')"
    fi
    cat /proc/mdstat
    base=$(vda_writes)
    fio_start "$SCENARIO" --filename=/dev/md0 --ioengine=libaio --direct=1
    wait_writes_since "$base" || fail "fio did not start writing within 60 s"
    log "fio writes; add vdb"
    copy_watch_start
    progress_watch_start md
    cpu_start ""
    t0=$(up)
    if [ "$mode" = raw ]; then
        mdadm /dev/md0 --add /dev/vdb || fail "mdadm --add"
        wait_recovered md0 "$TIMEOUT" || fail "recovery not done"
    else
        bm verbs.log add md0 /dev/vdb --backend md || fail "blockmirror add: $(bm_last verbs.log)"
        bm verbs.log wait md0 --backend md --interval 0.1 || fail "blockmirror wait: $(bm_last verbs.log)"
    fi
    t1=$(up)
    cpu_end
    progress_watch_end
    copy_watch_end
    log "recovered: $(md_progress md0) degraded=$(cat /sys/block/md0/md/degraded)"
    # what the kernel says, whatever the verbs said
    [ "$(cat /sys/block/md0/md/degraded)" = 0 ] || fail "md0 still degraded after the wait"
    [ "$(cat /sys/block/md0/md/sync_action)" = idle ] || fail "md0 sync_action is not idle after the wait"
    recovery_marks "$t0" "$t1"
    fio_result "$t1"
    cat /proc/mdstat
    t2=$(up)
    if [ "$mode" = raw ]; then
        echo check > /sys/block/md0/md/sync_action || fail "echo check"
        wait_idle md0 "$TIMEOUT" || fail "check not done"
        out=$(cat /sys/block/md0/md/mismatch_cnt)
    else
        bm check.log check md0 --backend md; rc=$?
        cat /out/check.log
        out=$(sed -n 's/.*mismatch_cnt=\([0-9]*\).*/\1/p' /out/check.log | tail -1)
        [ $rc = 0 ] || [ $rc = 3 ] || fail "blockmirror check: exit status $rc: $(bm_last check.log)"
        [ "$out" = "$(cat /sys/block/md0/md/mismatch_cnt)" ] || fail "blockmirror check says mismatch_cnt=$out, sysfs $(cat /sys/block/md0/md/mismatch_cnt)"
    fi
    t3=$(up)
    mark CHECK_S "$(sub "$t2" "$t3")"
    mark MISMATCH_CNT "${out:-?}"
    [ "$out" = 0 ] || fail "check: mismatch_cnt=${out:-?}"
    if [ "$mode" = raw ]; then
        mdadm --detail /dev/md0 > /out/detail.txt 2>&1
        cat /out/detail.txt
        mdadm --stop /dev/md0 || fail "mdadm --stop"
        mark STOP "mdadm: stopped /dev/md0"
    else
        bm detail.txt detail md0 --backend md || fail "blockmirror detail: $(bm_last detail.txt)"
        cat /out/detail.txt
        bm status.json status md0 --backend md --json || fail "blockmirror status: $(bm_last status.json)"
        cat /out/status.json; echo
        grep -q '"state" *: *"in-sync"' /out/status.json || fail "status --json does not say in-sync"
        # complete: md fails and removes the source; the array runs on the target alone
        bm complete.log complete md0 --backend md || fail "blockmirror complete: $(bm_last complete.log)"
        mark COMPLETE "$(bm_last complete.log)"
        bm status-completed.json status md0 --backend md --json || fail "blockmirror status (completed): $(bm_last status-completed.json)"
        bm stop.log stop md0 --backend md || fail "blockmirror stop: $(bm_last stop.log)"
        mark STOP "$(bm_last stop.log)"
        [ -e /sys/block/md0/md ] && fail "md0 still exists after blockmirror stop"
    fi
    guest_md5
}

# --- engine: the blockmirror engine over the same virtio disks --------------------------------
# nbd_attach: the kernel's NBD client on the export (netlink; NBD_CONNS connections, which the
# export allows: it offers CAN_MULTI_CONN) as /dev/nbd0, its I/O scheduler NBD_SCHED (none: like
# md0, which has none of its own; the disks under both keep theirs), and how the kernel set it up.
# No -timeout: the kernel's 30 s applies; finish fails the run if a request ever hit it.
nbd_attach() {
    local q=/sys/block/nbd0/queue hw sched
    nbd-client -unix /run/m0.sock /dev/nbd0 -N m0 -C "$NBD_CONNS" > /out/nbd-client.log 2>&1 ||
        { fail "nbd-client: $(tail -3 /out/nbd-client.log | tr '\n' ' ')"; return 1; }
    if [ -n "$NBD_SCHED" ]; then echo "$NBD_SCHED" > $q/scheduler || fail "scheduler $NBD_SCHED on nbd0"; fi
    hw=$(ls -d /sys/block/nbd0/mq/* 2>/dev/null | wc -l)
    sched=$(sed -n 's/.*\[\(.*\)\].*/\1/p' $q/scheduler)
    mark NBD_CLIENT "$NBD_CONNS conn, $hw hw queues x $(sysfs $q/nr_requests) requests, max $(sysfs $q/max_sectors_kb) KiB, ${sched:-none}"
    [ "$(sysfs /sys/block/nbd0/size)" = "$(sysfs /sys/block/vda/size)" ] || fail "/dev/nbd0 is not the size of vda"
}

# sc_engine fio-nbd|nbd0: the engine's mirror with fio through fio's nbd engine on the export's
# socket, or through the kernel's NBD client (/dev/nbd0, md's fio job as it is).
sc_engine() {
    local mode=$1 t0 t1 t2 t3 base out rc
    mkdir -p "$RUNDIR"
    bm_startup
    log "blockmirror build m0 (vda + missing)"
    local metrics=""
    [ "$PROGRESS" = 1 ] && metrics="--metrics $METRICS"
    # shellcheck disable=SC2086
    bm verbs.log build m0 --source /dev/vda --target missing --listen unix:/run/m0.sock --run-dir "$RUNDIR" --daemon $metrics $BM_ARGS ||
        { fail "blockmirror build: $(bm_last verbs.log 3 | tr '\n' ' ')"; cat "$RUNDIR"/*.log 2>/dev/null; return; }
    bm status-degraded.json status m0 --run-dir "$RUNDIR" --json || fail "blockmirror status: $(bm_last status-degraded.json)"
    local lmin lmax
    lmin=$(sed -n 's/.*"speedLimits" *: *{[^}]*"minimum" *: *\([0-9]*\).*/\1/p' /out/status-degraded.json)
    lmax=$(sed -n 's/.*"speedLimits" *: *{[^}]*"maximum" *: *\([0-9]*\).*/\1/p' /out/status-degraded.json)
    mark SPEED_LIMITS "engine min ${lmin:-?}, max ${lmax:-unlimited} KiB/s"
    base=$(vda_writes)
    if [ "$mode" = nbd0 ]; then
        nbd_attach || { bm stop.log stop m0 --run-dir "$RUNDIR"; return; }
        fio_start "$SCENARIO" --filename=/dev/nbd0 --ioengine=libaio --direct=1
    else
        fio_start "$SCENARIO" --ioengine=nbd --uri="nbd+unix:///m0?socket=/run/m0.sock"
    fi
    wait_writes_since "$base" || fail "fio did not start writing within 60 s"
    log "fio writes; add vdb"
    copy_watch_start
    progress_watch_start engine
    cpu_start "$(cat "$RUNDIR/m0.pid" 2>/dev/null)"
    t0=$(up)
    bm verbs.log add m0 /dev/vdb --run-dir "$RUNDIR" || fail "blockmirror add: $(bm_last verbs.log)"
    bm verbs.log wait m0 --run-dir "$RUNDIR" --interval 0.1 || fail "blockmirror wait: $(bm_last verbs.log)"
    t1=$(up)
    cpu_end
    progress_watch_end
    copy_watch_end
    recovery_marks "$t0" "$t1"
    fio_result "$t1"
    t2=$(up)
    bm check.log check m0 --run-dir "$RUNDIR"; rc=$?
    t3=$(up)
    cat /out/check.log
    out=$(sed -n 's/.*mismatch_cnt=\([0-9]*\).*/\1/p' /out/check.log | tail -1)
    [ $rc = 0 ] || [ $rc = 3 ] || fail "blockmirror check: exit status $rc: $(bm_last check.log)"
    mark CHECK_S "$(sub "$t2" "$t3")"
    mark MISMATCH_CNT "${out:-?}"
    [ "$out" = 0 ] || fail "check: mismatch_cnt=${out:-?}"
    bm detail.txt detail m0 --run-dir "$RUNDIR" || fail "blockmirror detail: $(bm_last detail.txt)"
    cat /out/detail.txt
    bm status.json status m0 --run-dir "$RUNDIR" --json || fail "blockmirror status: $(bm_last status.json)"
    grep -q '"state" *: *"in-sync"' /out/status.json || fail "status --json does not say in-sync"
    if [ "$mode" = nbd0 ]; then
        nbd-client -d /dev/nbd0 >> /out/nbd-client.log 2>&1 || fail "nbd-client -d: $(tail -1 /out/nbd-client.log)"
    fi
    bm stop.log stop m0 --run-dir "$RUNDIR" || fail "blockmirror stop: $(bm_last stop.log)"
    mark STOP "$(bm_last stop.log)"
    case "$(bm_last stop.log)" in *"in sync"*) ;; *) fail "stop does not say in sync" ;; esac
    cp "$RUNDIR"/*.log /out/ 2>/dev/null
    guest_md5
}

# --- fixtures: md's outputs in named states ---------------------------------------------------
SYSFS_FILES="sync_action sync_completed sync_speed sync_speed_min sync_speed_max mismatch_cnt degraded array_state last_sync_action level raid_disks resync_start component_size metadata_version"
HAS_BM_MD=0
capture() {   # capture STATE [MD]
    local state=$1 md=${2:-md0} dir=/out/fixtures f d
    mkdir -p "$dir" /out/blockmirror-md
    if [ -d "/sys/block/$md/md" ]; then
        for f in $SYSFS_FILES; do echo "$f=$(cat "/sys/block/$md/md/$f" 2>/dev/null)"; done > "$dir/sysfs-$state.txt"
        for d in /sys/block/$md/md/dev-*; do
            [ -d "$d" ] || continue
            for f in state slot errors; do echo "${d##*/}/$f=$(cat "$d/$f" 2>/dev/null)"; done
        done >> "$dir/sysfs-$state.txt"
    fi
    cat /proc/mdstat > "$dir/mdstat-$state.txt"
    mdadm --detail "/dev/$md" > "$dir/detail-$state.txt" 2>&1 || echo "(mdadm --detail exit status $?)" >> "$dir/detail-$state.txt"
    log "captured $state ($md): $(tr '\n' ' ' < "$dir/mdstat-$state.txt")"
    mark FIXTURE "$state"
    if [ $HAS_BM_MD = 1 ]; then
        blockmirror status "$md" --backend md --json > "/out/blockmirror-md/status-$state.json" 2>&1 ||
            echo "(exit status $?)" >> "/out/blockmirror-md/status-$state.json"
        blockmirror detail "$md" --backend md > "/out/blockmirror-md/detail-$state.txt" 2>&1 ||
            echo "(exit status $?)" >> "/out/blockmirror-md/detail-$state.txt"
    fi
}
# wait_started MD ACTION: until sync_action shows ACTION (up to 10 s)
wait_action() {
    local n=0
    while [ "$(cat /sys/block/$1/md/sync_action)" != "$2" ]; do
        n=$((n + 1)); [ $n -gt 100 ] && return 1; sleep 0.1
    done
}
sc_fixtures() {
    local speed_sys
    command -v blockmirror > /dev/null && blockmirror build --help 2>&1 | grep -q -- --backend && HAS_BM_MD=1
    speed_sys=$(cat /proc/sys/dev/raid/speed_limit_max)
    # degraded: built with missing
    mdadm --build /dev/md0 --level=1 --raid-disks=2 /dev/vda missing || { fail "mdadm --build"; return; }
    capture degraded
    # recovering, slowed down by a local limit (sync_speed_max shows "(local)")
    echo 5000 > /sys/block/md0/md/sync_speed_max
    mdadm /dev/md0 --add /dev/vdb || fail "mdadm --add"
    wait_action md0 recover || fail "recovery did not start"
    sleep 3
    capture recovering
    echo system > /sys/block/md0/md/sync_speed_max
    echo 2000000 > /proc/sys/dev/raid/speed_limit_max
    wait_recovered md0 120 || fail "recovery not done"
    echo "$speed_sys" > /proc/sys/dev/raid/speed_limit_max
    capture in-sync
    # a check running, slowed down the same way
    echo 5000 > /sys/block/md0/md/sync_speed_max
    echo check > /sys/block/md0/md/sync_action
    sleep 3
    capture check
    echo system > /sys/block/md0/md/sync_speed_max
    echo 2000000 > /proc/sys/dev/raid/speed_limit_max
    wait_idle md0 120 || fail "check not done"
    echo "$speed_sys" > /proc/sys/dev/raid/speed_limit_max
    [ "$(cat /sys/block/md0/md/mismatch_cnt)" = 0 ] || fail "mismatch_cnt after the recovery: $(cat /sys/block/md0/md/mismatch_cnt)"
    capture checked
    # faulty, then removed
    mdadm /dev/md0 --fail /dev/vdb || fail "mdadm --fail"
    sleep 0.5
    capture faulty
    mdadm /dev/md0 --remove /dev/vdb || fail "mdadm --remove"
    sleep 0.5
    capture removed
    mdadm --stop /dev/md0 || fail "mdadm --stop"
    capture stopped
    rm -f /out/fixtures/sysfs-stopped.txt
    # mismatches: NEW was a complete copy; change 4 KiB at 4 MiB and one sector at 100 MiB + 512
    # on it alone, build the pair again as clean, check.
    dd if=/dev/urandom of=/dev/vdb bs=4096 seek=1024 count=1 conv=notrunc 2>/dev/null
    dd if=/dev/urandom of=/dev/vdb bs=512 seek=204801 count=1 conv=notrunc 2>/dev/null
    sync
    mdadm --build /dev/md0 --level=1 --raid-disks=2 --assume-clean /dev/vda /dev/vdb || fail "mdadm --build --assume-clean"
    capture assume-clean
    echo check > /sys/block/md0/md/sync_action
    wait_idle md0 120 || fail "check not done"
    capture mismatch
    mark MISMATCH_CNT_AFTER_CORRUPTION "$(cat /sys/block/md0/md/mismatch_cnt) (9 sectors changed: 8 at 4 MiB, 1 at 100 MiB + 512)"
    echo repair > /sys/block/md0/md/sync_action
    wait_idle md0 120 || fail "repair not done"
    capture repaired
    echo check > /sys/block/md0/md/sync_action
    wait_idle md0 120 || fail "check not done"
    mark MISMATCH_CNT_AFTER_REPAIR "$(cat /sys/block/md0/md/mismatch_cnt)"
    mdadm --stop /dev/md0 || fail "mdadm --stop"
    # resync: a build with both disks and without --assume-clean resyncs; frozen: resync=PENDING
    echo 5000 > /proc/sys/dev/raid/speed_limit_max
    mdadm --build /dev/md0 --level=1 --raid-disks=2 /dev/vda /dev/vdb || fail "mdadm --build (resync)"
    if wait_action md0 resync; then
        sleep 3
        capture resync
        echo frozen > /sys/block/md0/md/sync_action
        sleep 1
        capture resync-pending
        echo idle > /sys/block/md0/md/sync_action
        sleep 1
        capture resync-resumed
    else
        fail "a build with both disks did not resync: $(md_progress md0)"
    fi
    mdadm --stop /dev/md0 || fail "mdadm --stop"
    # resync=DELAYED: two arrays on partitions of the same two disks resync one after the other
    if [ -b /dev/vdc2 ] && [ -b /dev/vdd2 ]; then
        mdadm --build /dev/md1 --level=1 --raid-disks=2 /dev/vdc1 /dev/vdd1 || fail "mdadm --build md1"
        wait_action md1 resync || fail "md1 does not resync"
        mdadm --build /dev/md2 --level=1 --raid-disks=2 /dev/vdc2 /dev/vdd2 || fail "mdadm --build md2"
        sleep 3
        capture resync-delayed md2
        capture resync-delayed-md1 md1
        rm -f /out/fixtures/mdstat-resync-delayed-md1.txt   # the same /proc/mdstat
        mdadm --stop /dev/md2 /dev/md1 || fail "mdadm --stop md1 md2"
    else
        fail "no partitions on vdc/vdd: $(ls /dev/vd*)"
    fi
    echo "$speed_sys" > /proc/sys/dev/raid/speed_limit_max
}

case $SCENARIO in
    md) sc_md raw ;;
    md-blockmirror) sc_md blockmirror ;;
    engine) sc_engine fio-nbd ;;
    engine-nbd) sc_engine nbd0 ;;
    fixtures) sc_fixtures ;;
    *) fail "unknown scenario $SCENARIO" ;;
esac
finish
