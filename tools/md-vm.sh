#!/usr/bin/env bash
# Kernel md inside a qemu VM, next to the blockmirror engine on the same virtio disks.
#
# This machine's kernel has no md module, so kernel md runs in a small VM under qemu's software
# emulation (TCG; KVM here cannot run a guest): Debian's linux-image-cloud-amd64 kernel and an
# initramfs with busybox, mdadm, fio, the virtio/md/raid1 modules and the blockmirror binary with
# the libraries it links. Two virtio disks: vda = OLD (SIZE bytes of seeded random data), vdb =
# NEW (zeros, same size), plus a small out disk the guest writes its files to (a tar). The guest's
# /init (tools/lib/md-vm-init.sh) runs one scenario per boot and prints "@@ KEY value" lines on the
# serial console; OLD and NEW are compared on the host once the VM has powered off.
#
# Usage: tools/md-vm.sh build                 the initramfs (and blockmirror unless BLOCKMIRROR_BIN)
#        tools/md-vm.sh run [SCENARIO...]     boot once per scenario (default: both)
#        tools/md-vm.sh all                   build, then run md, md-blockmirror, engine
# Scenarios (each starts from the same OLD and an empty NEW; the same fio writes during the recovery):
#   md              kernel md through mdadm: mdadm --build /dev/md0 --level=1 --raid-disks=2
#                   /dev/vda missing; fio on /dev/md0 (libaio, O_DIRECT); mdadm --add /dev/md0
#                   /dev/vdb once fio writes; wait until sync_action is idle; check (mismatch_cnt);
#                   mdadm --stop
#   md-blockmirror  the same through blockmirror's verbs with --backend md (build, add, wait, check,
#                   detail, status --json, stop)
#   engine          the blockmirror engine: build m0 --target missing (NBD on a unix socket), fio
#                   through its export (fio's nbd engine), add /dev/vdb, wait, check, stop
#   both            md then engine, then the two side by side
#   fixtures        /proc/mdstat, mdadm --detail and md sysfs in named states (degraded,
#                   recovering, in sync, check running, mismatches, repaired, resync, resync=PENDING,
#                   resync=DELAYED, faulty, removed, stopped) into FIXTURES_DIR
# Environment:
#   SIZE=512M            size of OLD and NEW (K/M/G suffixes)
#   FIO_MB=64            MiB fio writes during the recovery (FIO_BS=64k, FIO_QD=8, FIO_SEED=1234)
#   MD_SPEED_MAX=        KiB/s for /proc/sys/dev/raid/speed_limit_max (default: md's, 200000)
#   BM_ARGS=             extra arguments of the engine's build (e.g. "--speed-max 200000")
#   GUEST_MD5=0          1: also md5sum both disks in the guest (busybox: ~9 s per 512 MiB)
#   REPEAT=1             boots per scenario (the order alternates); the table shows medians
#   BLOCKMIRROR_BIN=     the binary to put in the VM (default: swift build -c release into
#                        .build-vm); `build` and `all` rebuild it, `run` builds only if missing
#   WORK=/var/tmp/blockmirror-md-vm   initramfs, images, logs and results (not on tmpfs:
#                        the disks are opened with O_DIRECT, cache=none)
#   FIXTURES_DIR=$WORK/fixtures       where `run fixtures` puts the captured files
#   MEM=2048 (MiB)  VM_TIMEOUT=600 (s: the VM must have powered off by then)  KVER= (guest kernel)
# Exit status: 0 if every scenario's steps succeeded, check found no mismatch, both legs have the
# same md5 and (with several scenarios) every scenario ended with the same contents; 1 otherwise
# (also if the VM did not power off in time); 64 usage.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=$ROOT/tools/lib/md_vm.py
GUEST_INIT=$ROOT/tools/lib/md-vm-init.sh
WORK=${WORK:-/var/tmp/blockmirror-md-vm}
SIZE=${SIZE:-512M}
FIO_MB=${FIO_MB:-64}
FIO_BS=${FIO_BS:-64k}
FIO_QD=${FIO_QD:-8}
FIO_SEED=${FIO_SEED:-1234}
MD_SPEED_MAX=${MD_SPEED_MAX:-}
BM_ARGS=${BM_ARGS:-}
GUEST_MD5=${GUEST_MD5:-0}
REPEAT=${REPEAT:-1}
MEM=${MEM:-2048}
VM_TIMEOUT=${VM_TIMEOUT:-600}
FIXTURES_DIR=${FIXTURES_DIR:-$WORK/fixtures}
DATA_SEED=${DATA_SEED:-blockmirror-md-vm}
INITRD=$WORK/initramfs.cpio.gz
SCRATCH=.build-vm

say() { printf 'md-vm: %s\n' "$*"; }
die() { printf 'md-vm: error: %s\n' "$*" >&2; exit 1; }

bytes() {   # 512M -> 536870912
    local v=${1^^}
    case $v in
        *K) echo $((${v%K} << 10)) ;; *M) echo $((${v%M} << 20)) ;; *G) echo $((${v%G} << 30)) ;;
        *[0-9]) echo "$v" ;; *) die "bad size $1" ;;
    esac
}
SIZE_BYTES=$(bytes "$SIZE")
((SIZE_BYTES % 1048576 == 0)) || die "SIZE must be a multiple of 1 MiB"

# --- packages ---------------------------------------------------------------------------------
ensure_packages() {
    local missing=() p
    for p in qemu-system-x86 linux-image-cloud-amd64 busybox-static mdadm cpio fio libnbd0 python3; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

guest_kernel() {
    if [[ -z ${KVER:-} ]]; then
        KVER=$(printf '%s\n' /lib/modules/*-cloud-amd64 | sort -V | tail -1)
        KVER=${KVER##*/}
    fi
    [[ -n $KVER && -f /boot/vmlinuz-$KVER ]] || die "no cloud-amd64 kernel in /boot and /lib/modules (linux-image-cloud-amd64)"
    KERNEL=/boot/vmlinuz-$KVER
    MODDIR=/lib/modules/$KVER
}

# --- blockmirror ------------------------------------------------------------------------------
blockmirror_bin() {   # blockmirror_bin rebuild|if-missing: sets BIN
    if [[ -n ${BLOCKMIRROR_BIN:-} ]]; then
        BIN=$BLOCKMIRROR_BIN
        [[ -x $BIN ]] || die "BLOCKMIRROR_BIN=$BIN is not an executable"
        return
    fi
    BIN=$ROOT/$SCRATCH/release/blockmirror
    if [[ $1 == rebuild || ! -x $BIN ]]; then
        if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
            export PATH=/opt/swift/usr/bin:$PATH
        fi
        command -v swift >/dev/null 2>&1 || die "no Swift toolchain (PATH or /opt/swift); or set BLOCKMIRROR_BIN"
        say "swift build -c release --product blockmirror --scratch-path $SCRATCH"
        (cd "$ROOT" && swift build -c release --product blockmirror --scratch-path "$SCRATCH" 2>&1 | tail -3) ||
            die "swift build failed"
        [[ -x $BIN ]] || die "swift build did not produce $BIN"
    fi
}

# --- initramfs --------------------------------------------------------------------------------
copy_elf() {   # copy_elf ROOTFS FILE [DEST]: FILE and every library ldd lists, at the same paths
    local rootfs=$1 file=$2 dest=${3:-$2} lib
    install -D -m755 "$file" "$rootfs$dest"
    while read -r lib; do
        [[ -e $lib && ! -e $rootfs$lib ]] || continue
        install -D -m755 "$(readlink -f "$lib")" "$rootfs$lib"
        # debug sections only: the initramfs is unpacked under emulation, size is boot time
        strip --strip-debug "$rootfs$lib" 2>/dev/null || true
    done < <(ldd "$file" | grep -oE '/[^ ]+' | sort -u)
}

build_initramfs() {
    local rootfs=$WORK/initramfs ko n
    guest_kernel
    rm -rf "$rootfs"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,proc,sys,dev,run,tmp,root,mods}
    cp /bin/busybox "$rootfs/bin/busybox"
    if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is not static (busybox-static)"; fi
    copy_elf "$rootfs" /sbin/mdadm
    copy_elf "$rootfs" /usr/bin/fio
    # fio's nbd engine is built into Debian's fio (it links libnbd); external engines, if any:
    [[ -d /usr/lib/x86_64-linux-gnu/fio ]] && for ko in /usr/lib/x86_64-linux-gnu/fio/*.so; do
        [[ -e $ko ]] && copy_elf "$rootfs" "$ko"
    done
    copy_elf "$rootfs" "$BIN" /usr/local/bin/blockmirror
    strip --strip-debug "$rootfs/usr/local/bin/blockmirror" 2>/dev/null || true
    echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
    echo 'root:x:0:' > "$rootfs/etc/group"
    : > "$rootfs/mods/order"
    for ko in $(python3 "$HELPER" modorder "$MODDIR" virtio_pci virtio_blk md-mod raid1); do
        cp "$MODDIR/$ko" "$rootfs/mods/"
        n=$(basename "$ko")
        case $n in   # Debian may ship compressed modules; busybox insmod wants them plain
            *.xz) xz -d "$rootfs/mods/$n"; n=${n%.xz} ;;
            *.zst) zstd -q -d --rm "$rootfs/mods/$n"; n=${n%.zst} ;;
        esac
        echo "$n" >> "$rootfs/mods/order"
    done
    install -m755 "$GUEST_INIT" "$rootfs/init"
    (cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1 > "$INITRD.tmp") && mv "$INITRD.tmp" "$INITRD"
    {
        echo "kernel=$KVER"
        echo "blockmirror=$BIN $(stat -c %Y "$BIN")"
        echo "init=$(cat "$GUEST_INIT" "$0" | md5sum)"
    } > "$WORK/initramfs.stamp"
    say "initramfs $INITRD: $(du -h "$INITRD" | cut -f1) gzipped ($(du -sh "$rootfs" | cut -f1) unpacked); modules: $(tr '\n' ' ' < "$rootfs/mods/order")"
    say "guest kernel $KERNEL; mdadm $(mdadm --version 2>&1 | cut -d' ' -f3); fio $(fio --version); blockmirror $BIN"
}

initramfs_current() {
    [[ -f $INITRD && -f $WORK/initramfs.stamp ]] || return 1
    grep -qxF "blockmirror=$BIN $(stat -c %Y "$BIN")" "$WORK/initramfs.stamp" &&
        grep -qxF "init=$(cat "$GUEST_INIT" "$0" | md5sum)" "$WORK/initramfs.stamp"
}

# --- images -----------------------------------------------------------------------------------
pristine_old() {   # the seeded random OLD, generated once per size and seed
    local p=$WORK/old-$SIZE_BYTES.pristine
    if [[ ! -f $p || ! -f $p.md5 ]]; then
        say "generating OLD: $SIZE_BYTES bytes of seeded random data"
        python3 "$HELPER" random-image "$p.tmp" "$SIZE_BYTES" "$DATA_SEED"
        md5sum < "$p.tmp" | cut -d' ' -f1 > "$p.md5"
        mv "$p.tmp" "$p"
    fi
    PRISTINE=$p
}

# --- one boot ---------------------------------------------------------------------------------
md5_of() { md5sum < "$1" | cut -d' ' -f1; }

boot() {   # boot SCENARIO DIR: one VM run; writes DIR/{console.log,result.json,files/}
    local sc=$1 dir=$2 drives=() out_disk=vdc rc=0 t0 t1 cmdline md5_old md5_new
    rm -rf "$dir"
    mkdir -p "$dir/files"
    cp --sparse=never "$PRISTINE" "$dir/old.img"
    truncate -s "$SIZE_BYTES" "$dir/new.img"
    drives+=(-drive "file=$dir/old.img,if=virtio,format=raw,cache=none,aio=native")
    drives+=(-drive "file=$dir/new.img,if=virtio,format=raw,cache=none,aio=native")
    if [[ $sc == fixtures ]]; then   # two small disks with two partitions each: resync=DELAYED
        for d in c d; do
            truncate -s 64M "$dir/part-$d.img"
            python3 "$HELPER" partitions "$dir/part-$d.img" 30 30
            drives+=(-drive "file=$dir/part-$d.img,if=virtio,format=raw,cache=none,aio=native")
        done
        out_disk=vde
    fi
    truncate -s 64M "$dir/out.img"
    drives+=(-drive "file=$dir/out.img,if=virtio,format=raw,cache=none,aio=native")
    cmdline="console=ttyS0 loglevel=1 panic=-1 bm_scenario=$sc bm_out=$out_disk bm_fio_mb=$FIO_MB"
    cmdline+=" bm_fio_bs=$FIO_BS bm_fio_qd=$FIO_QD bm_fio_seed=$FIO_SEED bm_md5=$GUEST_MD5"
    # the guest's own watchdog ends a hung scenario with its files saved, before the host kills qemu
    cmdline+=" bm_timeout=$((VM_TIMEOUT > 60 ? VM_TIMEOUT - 30 : VM_TIMEOUT))"
    [[ -n $MD_SPEED_MAX ]] && cmdline+=" bm_md_speed_max=$MD_SPEED_MAX"
    [[ -n $BM_ARGS ]] && cmdline+=" bm_args=$(tr ' ' , <<< "$BM_ARGS")"
    say "boot: scenario $sc (qemu TCG, $MEM MiB, 2 vCPUs, SIZE=$SIZE; log $dir/console.log)"
    t0=$EPOCHREALTIME
    timeout --foreground -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m "$MEM" -smp 2 \
        -display none -no-reboot -nodefaults -serial stdio -kernel "$KERNEL" -initrd "$INITRD" \
        -append "$cmdline" "${drives[@]}" < /dev/null > "$dir/console.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    tr -d '\r' < "$dir/console.log" | grep -E '^(@@|-- )' | sed "s/^/  [$sc] /" || true
    python3 "$HELPER" markers "$dir/console.log" "$dir/markers.json"
    tar -xf "$dir/out.img" -C "$dir/files" 2>/dev/null || say "$sc: nothing readable on the out disk"
    md5_old=$(md5_of "$dir/old.img")
    md5_new=$(md5_of "$dir/new.img")
    python3 - "$dir/markers.json" "$dir/result.json" "$rc" "$md5_old" "$md5_new" "$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")" "$VM_TIMEOUT" <<'EOF'
import json, sys
markers, out, rc, md5_old, md5_new, wall, limit = sys.argv[1:]
r = json.load(open(markers))
r["MD5_OLD"], r["MD5_NEW"] = md5_old, md5_new
r["LEGS_EQUAL"] = "yes" if md5_old == md5_new else "no"
r["QEMU_WALL_S"] = wall
if rc == "124" or rc == "137":
    r["FAIL"].append(f"the VM did not power off within {limit} s (killed)")
elif rc != "0":
    r["FAIL"].append(f"qemu exited with status {rc}")
if "STATUS" not in r:
    r["FAIL"].append("no STATUS line from the guest")
for key, host in (("GUEST_MD5_OLD", md5_old), ("GUEST_MD5_NEW", md5_new)):
    if r.get(key) and r[key] != host:
        r["FAIL"].append(f"the guest's md5 ({key}) differs from the host's after power-off")
json.dump(r, open(out, "w"), indent=1, sort_keys=True)
EOF
    rm -f "$dir/old.img" "$dir/new.img" "$dir"/part-*.img
    say "$sc: qemu wall $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s; md5 OLD $md5_old NEW $md5_new"
}

scenario_ok() {   # scenario_ok RESULT_JSON: STATUS 0, no FAIL (legs are compared by `compare`)
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r.get("STATUS")=="0" and not r["FAIL"] else 1)' "$1"
}

has_md_backend() { "$BIN" build --help 2>&1 | grep -q -- '--backend'; }

run_scenarios() {
    local sc results=() status=0 round dir
    for sc in "$@"; do
        case $sc in
            md|engine|fixtures) ;;
            md-blockmirror) has_md_backend || die "$BIN has no --backend md (scenario md-blockmirror)" ;;
            *) die "unknown scenario $sc (md, md-blockmirror, engine, both, fixtures)" ;;
        esac
    done
    rm -rf "$WORK/results"
    for ((round = 1; round <= REPEAT; round++)); do
        for sc in "$@"; do
            dir=$WORK/results/$sc; ((REPEAT == 1)) || dir+=-$round
            boot "$sc" "$dir"
            if [[ $sc == fixtures ]]; then
                install_fixtures "$dir" || status=1
                scenario_ok "$dir/result.json" || { say "fixtures: failed: $(python3 -c 'import json,sys; print("; ".join(json.load(open(sys.argv[1]))["FAIL"]))' "$dir/result.json")"; status=1; }
            else
                results+=("$dir/result.json")
            fi
        done
        # the next round runs the scenarios in the other order
        local reversed=() i
        for ((i = $# ; i >= 1; i--)); do reversed+=("${!i}"); done
        set -- "${reversed[@]}"
    done
    if ((${#results[@]})); then
        echo
        python3 "$HELPER" compare "${results[@]}" | tee "$WORK/results/compare.txt" || status=1
        say "results: $WORK/results (console.log, result.json and the guest's files per scenario)"
    fi
    return $status
}

install_fixtures() {
    local src=$1/files/fixtures kernel mdadm_version
    [[ -d $src ]] || { say "fixtures: no files came out of the VM"; return 1; }
    mkdir -p "$FIXTURES_DIR"
    cp "$src"/* "$FIXTURES_DIR"/
    kernel=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("KERNEL","?"))' "$1/result.json")
    mdadm_version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("MDADM","?"))' "$1/result.json")
    fixtures_readme "$kernel" "$mdadm_version" > "$FIXTURES_DIR/README.md"
    say "fixtures: $(find "$src" -type f | wc -l) files in $FIXTURES_DIR (kernel $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("KERNEL","?"))' "$1/result.json"))"
}

fixtures_readme() {   # fixtures_readme KERNEL MDADM_VERSION: the README.md of the fixtures folder
    cat <<EOF
# Kernel md outputs, captured from a real kernel

\`mdstat-STATE.txt\`, \`detail-STATE.txt\` and \`sysfs-STATE.txt\` were captured by
\`FIXTURES_DIR=Tests/MDBackendTests/Fixtures tools/md-vm.sh run fixtures\` ($(date -u +%Y-%m-%d)):
kernel md in a qemu VM (TCG) running Debian 12's \`linux-image-cloud-amd64\` kernel $1 and
$2 (Debian 12's mdadm package), with busybox as the shell.
The \`seed-*\` files come from elsewhere (the seed article) and are not touched by the script.

The arrays are non-persistent RAID1 builds (\`mdadm --build /dev/md0 --level=1 --raid-disks=2\`, no
superblock) of two 512 MiB virtio disks, vda (OLD, random data) and vdb (NEW); \`resync-delayed\` uses
two arrays on 30 MiB partitions of two more disks (md1 = vdc1 + vdd1, md2 = vdc2 + vdd2).

Per state:

- \`mdstat-STATE.txt\`: \`/proc/mdstat\` as read.
- \`detail-STATE.txt\`: \`mdadm --detail /dev/mdN\`, stdout and stderr; a non-zero exit status is added
  as a last line \`(mdadm --detail exit status N)\`.
- \`sysfs-STATE.txt\`: \`KEY=VALUE\` lines, one per file of \`/sys/block/mdN/md/\` (sync_action,
  sync_completed, sync_speed, sync_speed_min, sync_speed_max, mismatch_cnt, degraded, array_state,
  then last_sync_action, level, raid_disks, resync_start, component_size, metadata_version), then
  \`dev-X/state\`, \`dev-X/slot\`, \`dev-X/errors\` per member.

The three are read one after the other (sysfs, mdstat, detail) within about half a second: the
progress figures of a running sync differ slightly between them.

| state | how it was reached |
|---|---|
| degraded | \`mdadm --build /dev/md0 --level=1 --raid-disks=2 /dev/vda missing\` |
| recovering | \`echo 5000 > sync_speed_max\` (a local limit), \`mdadm /dev/md0 --add /dev/vdb\`, 3 s later |
| in-sync | the recovery finished (limits back to the system's) |
| check | \`echo 5000 > sync_speed_max\`, \`echo check > sync_action\`, 3 s later |
| checked | that check finished: mismatch_cnt 0, last_sync_action check |
| faulty | \`mdadm /dev/md0 --fail /dev/vdb\` |
| removed | then \`mdadm /dev/md0 --remove /dev/vdb\` |
| stopped | \`mdadm --stop /dev/md0\`: no array in mdstat, detail is mdadm's error (no sysfs file) |
| assume-clean | NEW changed alone (4 KiB at 4 MiB, 512 bytes at 100 MiB + 512: 9 sectors), then \`mdadm --build ... --assume-clean /dev/vda /dev/vdb\` |
| mismatch | \`echo check > sync_action\` finished on that array |
| repaired | \`echo repair > sync_action\` finished (a check afterwards found 0) |
| resync | \`mdadm --build ... /dev/vda /dev/vdb\` without \`--assume-clean\`, speed_limit_max 5000 (system), 3 s later |
| resync-pending | \`echo frozen > sync_action\` during that resync: \`resync=PENDING\` |
| resync-resumed | \`echo idle > sync_action\`: the resync goes on from where it stopped |
| resync-delayed | md1 resyncing, md2 waiting for it (same disks): mdstat of both, md2's detail and sysfs |
| resync-delayed-md1 | md1's detail and sysfs at the same moment |

What they show (kernel $1):

- \`sync_completed\` moves in steps, not continuously: at 3% of a recovery (mdstat) it still read
  \`0 / 1048576\`; it reads \`none\` when idle and \`delayed\` for a delayed resync. mdstat's
  \`(done/total)\` is the finer progress.
- \`mismatch_cnt\` counts whole resync blocks (64 KiB = 128 sectors for RAID1), not differing sectors:
  9 changed sectors in two blocks gave 256. After \`repair\` it holds the count repaired.
- sync_speed_min/max read \`N (system)\` or \`N (local)\`; \`sync_action\` reads \`frozen\` while frozen.
- A non-persistent array's \`Version :\` is empty; member numbers in mdstat: \`vdb[2]\` after
  \`--add\` to a build with \`missing\`, \`vdb[1]\` when built with both; a failed one is \`vdb[2](F)\`.
- /proc/mdstat puts a tab before \`resync=DELAYED\` and \`resync=PENDING\` (after the 6 spaces), and
  ends each array with a line of 6 spaces.
- mdadm --detail's State says \`resyncing (DELAYED)\` / \`resyncing (PENDING)\`, \`checking\`,
  \`degraded, recovering\`; its "Rebuild/Resync/Check Status : N% complete" is a whole percent,
  mdstat's has a decimal.
EOF
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 64; }
    shift
    case $cmd in
        build|run|all) ;;
        -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: tools/md-vm.sh build | run [md|md-blockmirror|engine|both|fixtures]... | all" >&2; exit 64 ;;
    esac
    mkdir -p "$WORK"
    ensure_packages
    guest_kernel
    case $cmd in
        build)
            blockmirror_bin rebuild
            build_initramfs
            ;;
        run)
            (($#)) || set -- both
            local args=() a
            for a in "$@"; do
                if [[ $a == both ]]; then args+=(md engine); else args+=("$a"); fi
            done
            blockmirror_bin if-missing
            initramfs_current || build_initramfs
            pristine_old
            run_scenarios "${args[@]}"
            ;;
        all)
            blockmirror_bin rebuild
            build_initramfs
            pristine_old
            local list=(md)
            if has_md_backend; then list+=(md-blockmirror); else say "md-blockmirror skipped: $BIN has no --backend"; fi
            list+=(engine)
            run_scenarios "${list[@]}"
            ;;
    esac
}

main "$@"
