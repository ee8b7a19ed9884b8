#!/usr/bin/env bash
# The main job, end to end on image files it creates: build BlockMirror, put a filesystem with a
# file on an image, export the image over NBD with `blockmirror serve`, and look at it with real
# NBD clients (nbdinfo, qemu-img, nbdcopy). Later issues turn this into the live-migration demo.
# Usage: tools/demo.sh   (as root; WORK=dir to keep the files somewhere else)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building blockmirror (release)"
swift build -c release --product blockmirror 2>&1 | tail -1
BIN=$(swift build -c release --show-bin-path)/blockmirror

WORK=${WORK:-$(mktemp -d /var/tmp/blockmirror-demo.XXXXXX)}
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say "Creating OLD: a 256 MiB image with an ext4 filesystem and a 20 MiB file"
IMG=$WORK/old.img
truncate -s 256M "$IMG"
mkdir -p "$WORK/files"
head -c 20M /dev/urandom > "$WORK/files/somefile.data"
mkfs.ext4 -q -F -d "$WORK/files" "$IMG"
( cd "$WORK/files" && md5sum somefile.data )

say "Exporting it: blockmirror serve $IMG --listen unix:$WORK/nbd.sock"
"$BIN" serve "$IMG" --listen "unix:$WORK/nbd.sock" --name old >"$WORK/uri" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 600); do [[ -s $WORK/uri ]] && break; kill -0 $SERVER_PID || { cat "$WORK/server.log"; exit 1; }; sleep 0.1; done
URI=$(head -1 "$WORK/uri")
echo "clients use: $URI"

say "What nbdinfo sees"
nbdinfo "$URI"

say "Its allocation map (base:allocation; ext4 leaves most of the image unallocated)"
nbdinfo --map --totals "$URI"

say "Copying the export with nbdcopy and comparing with the image"
nbdcopy "$URI" "$WORK/copy.img"
cmp "$IMG" "$WORK/copy.img" && echo "identical: $(stat -c %s "$WORK/copy.img") bytes"

say "Checking the filesystem through NBD (qemu-img and e2fsck on the copy)"
qemu-img info -f raw "$URI" | head -3
e2fsck -fn "$WORK/copy.img"

say "Stopping the server (SIGTERM: in-flight requests answered, device flushed)"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID"; SERVER_PID=
tail -2 "$WORK/server.log"
echo
echo "Done. The mirror engine (issue 3) turns this into the live OLD -> NEW migration."
