#!/usr/bin/env bash
# The main job: a live migration of a "VM disk" from OLD to NEW on image files it creates, told as
# a short story with its figures — the seed scenario (mdadm --build … OLD missing; --add NEW; keep
# writing; --stop; boot on NEW) with BlockMirror in md's place:
#   OLD holds an ext4 filesystem with files; a degraded mirror on OLD is exported over NBD and
#   mounted (nbdfuse + loop: the "VM"); NEW is added and copied in the background while 100 MiB
#   more are written; the mirror is checked; complete switches the export onto NEW while the
#   filesystem stays mounted (no second outage); more writes land on NEW alone; the mirror is
#   stopped; NEW mounts alone with every file, and OLD is exactly the disk of the moment of complete.
# Usage: tools/demo.sh   (as root on Debian 12; SIZE=512M, SPEED_MAX=KiB/s of the copy, WORK=dir)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh

SIZE=${SIZE:-512M}
SPEED_MAX=${SPEED_MAX:-40000}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.1f}')"; }

say "Building blockmirror (release)"
swift build -c release --product blockmirror 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)/blockmirror
bm() { "$BIN" "$@" --run-dir "$WORK/run"; }

WORK=${WORK:-$(mktemp -d /var/tmp/blockmirror-demo.XXXXXX)}
MNT=$WORK/vm FUSE=$WORK/fuse LOOP=
cleanup() {
    mountpoint -q "$MNT" && umount "$MNT"
    [[ -n $LOOP ]] && losetup -d "$LOOP"
    mountpoint -q "$FUSE" && fusermount3 -u "$FUSE"
    [[ -S $WORK/run/vm-disk.ctl ]] && "$BIN" stop vm-disk --run-dir "$WORK/run" >/dev/null 2>&1
    mountpoint -q "$WORK/check" && umount "$WORK/check"
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT" "$FUSE" "$WORK/check" "$WORK/files"

say "1. The old disk: OLD ($SIZE) with an ext4 filesystem and 3 files"
OLD=$WORK/old.img NEW=$WORK/new.img
truncate -s "$SIZE" "$OLD"
for i in 1 2 3; do head -c $((i * 8))M /dev/urandom > "$WORK/files/file$i.data"; done
mkfs.ext4 -q -F -d "$WORK/files" "$OLD"
(cd "$WORK/files" && md5sum file*.data | tee "$WORK/before.md5")
truncate -s "$SIZE" "$NEW"
echo "NEW: an empty $SIZE image, the disk we move to"

say "2. Build a degraded mirror on OLD (mdadm --build … OLD missing) and export it over NBD"
bm build vm-disk --source "$OLD" --target missing --bitmap "$WORK/vm-disk.bitmap" --speed-max "$SPEED_MAX" \
    --listen "unix:$WORK/nbd.sock" --daemon | tee "$WORK/started"
URI=$(head -1 "$WORK/started")
bm status vm-disk

say "3. The VM uses the mirror: nbdfuse + loop device + mount"
nbdfuse "$FUSE/" "$URI" &
for _ in $(seq 300); do [[ -e $FUSE/nbd ]] && break; sleep 0.1; done
LOOP=$(losetup --find --show --direct-io=off "$FUSE/nbd")
mount "$LOOP" "$MNT"
(cd "$MNT" && md5sum -c --quiet "$WORK/before.md5") && echo "the VM sees its 3 files, checksums OK"

say "4. Add NEW (mdadm --add): the background copy starts, held to ${SPEED_MAX}K/sec"
T0=$(now)
bm add vm-disk "$NEW"
sleep 1
bm status vm-disk

say "5. The VM keeps writing during the copy: 100 MiB more"
head -c 100M /dev/urandom > "$WORK/payload"
W0=$(now)
cp "$WORK/payload" "$MNT/written-during-copy.data"
sync -f "$MNT/written-during-copy.data"
W1=$(now)
(cd "$MNT" && md5sum *.data > "$WORK/after.md5")
WRITE_S=$(elapsed "$W0" "$W1")
echo "100 MiB written through the mirror in ${WRITE_S} s while the copy ran"
bm detail vm-disk | sed -n '/State :/,/Rebuild Finish/p'

say "6. Lift the speed limit while it runs (md's sync_speed_max) and wait for in sync (mdadm --wait)"
bm speed vm-disk --max unlimited
bm wait vm-disk
T1=$(now)
RECOVERY_S=$(elapsed "$T0" "$T1")

say "7. Check: compare OLD and NEW region by region (md's check, mismatch_cnt)"
bm check vm-disk | tee "$WORK/check.out"

say "8. Complete: the export switches onto NEW under the running VM (no second outage)"
bm complete vm-disk | tee "$WORK/completed"
OLD_AT_SWITCH=$(md5sum < "$OLD")
head -c 8M /dev/urandom > "$MNT/written-after-complete.data"
sync -f "$MNT/written-after-complete.data"
(cd "$MNT" && md5sum *.data > "$WORK/final.md5")
echo "the VM wrote 8 MiB more, now on NEW alone"
bm status vm-disk

say "9. Whenever the VM shuts down: stop the mirror"
umount "$MNT"; losetup -d "$LOOP"; LOOP=
fusermount3 -u "$FUSE"
bm stop vm-disk | tee "$WORK/stopped"

say "10. NEW alone holds every file; OLD is the disk as it was at complete (the way back)"
mount -o ro,loop "$NEW" "$WORK/check"
(cd "$WORK/check" && md5sum -c "$WORK/final.md5")
umount "$WORK/check"
[[ $(md5sum < "$OLD") == "$OLD_AT_SWITCH" ]] && echo "OLD unchanged since complete"
cp --sparse=always "$OLD" "$WORK/old-copy.img"   # mounted with its journal replayed: a copy, OLD stays as it is
mount -o loop "$WORK/old-copy.img" "$WORK/check"
(cd "$WORK/check" && md5sum -c --quiet "$WORK/after.md5") && echo "OLD holds the 4 files of the moment of complete"
[[ ! -e $WORK/check/written-after-complete.data ]] && echo "and not the one written after it"
umount "$WORK/check"; rm -f "$WORK/old-copy.img"

say "The story"
cat <<STORY
A $SIZE disk with a live ext4 filesystem moved from OLD to NEW without unmounting it: the mirror
started degraded on OLD, NEW was added, and the copy ran in the background (${RECOVERY_S} s from
'add' to in sync, held to ${SPEED_MAX}K/sec until step 6) while the filesystem took 100 MiB of new
writes (${WRITE_S} s). check reported $(grep -o 'mismatch_cnt=[0-9]*' "$WORK/check.out"). Then
complete switched the same export onto NEW while the filesystem stayed mounted:
"$(cat "$WORK/completed")". The second outage of the md way (stop, point the VM at NEW, boot) is
gone: the VM kept running on the same URI and wrote 8 MiB more, to NEW alone. stop reported
"$(cat "$WORK/stopped")"; NEW mounted alone with all 5 files, and OLD still holds the disk as it
was at complete, for the way back (add it to the mirror again: only the regions written since are copied).
STORY
