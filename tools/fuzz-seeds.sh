#!/usr/bin/env bash
# Records the seed corpora of the fuzz targets (Fuzz/Corpus/<target>/) from real exchanges:
#   nbd-handshake, nbd-transmission: what nbdinfo, nbdsh, qemu-io, qemu-img, nbdcopy and fio send
#     to `blockmirror serve`, through a recording proxy (tools/record-proxy.py); the handshake seed
#     is the client's whole stream, the transmission seed what follows its GO or EXPORT_NAME,
#     behind a first byte saying what was negotiated (see Fuzz/Sources/fuzz-nbd-transmission);
#   control: the CLI's requests to a mirror daemon and the daemon's answers, one file each;
#   bitmap: the bitmap files of mirrors stopped cleanly, killed with SIGKILL mid-recovery, run
#     degraded, and one of four pages.
# Usage: tools/fuzz-seeds.sh [BLOCKMIRROR_BINARY]   (default: .build/debug/blockmirror, built if missing)
# Files already in a corpus are kept; a recorded seed is named after its content's sha1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source tools/setup.sh
binary=${1:-.build/debug/blockmirror}
[[ -x $binary ]] || swift build --product blockmirror
binary=$(realpath "$binary")
work=$(mktemp -d /tmp/fuzz-seeds.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_for_socket() {
    for _ in $(seq 600); do [[ -S $1 ]] && return 0; sleep 0.1; done
    echo "fuzz-seeds: $1 never appeared" >&2
    exit 1
}

# Starts the recording proxy LISTEN -> TARGET into OUT.
record() {
    python3 "$root/tools/record-proxy.py" "$1" "$2" "$3" &
    pids+=($!)
    wait_for_socket "$1"
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Saves FILE into Fuzz/Corpus/TARGET under its sha1.
keep() {
    local target=$1 file=$2
    [[ -s $file ]] || return 0
    mkdir -p "Fuzz/Corpus/$target"
    cp "$file" "Fuzz/Corpus/$target/$(sha1sum "$file" | cut -c1-16)"
}

# nbdsh is a Python program of Debian's python3-nbd: run it with Debian's python3.
nbdsh() { PATH=/usr/bin:$PATH command nbdsh "$@"; }

# --- NBD: real clients against `blockmirror serve` ---------------------------------------------
truncate -s 1M "$work/disk.img"
printf 'seed data' | dd of="$work/disk.img" bs=1 seek=4096 conv=notrunc status=none
"$binary" serve "$work/disk.img" --name disk --listen "unix:$work/serve.sock" --log-level warning &
serve=$!
pids+=($serve)
wait_for_socket "$work/serve.sock"
record "$work/rec.sock" "$work/serve.sock" "$work/nbd"
uri="nbd+unix:///disk?socket=$work/rec.sock"
nbdinfo "$uri" >/dev/null
nbdinfo --list "nbd+unix:///?socket=$work/rec.sock" >/dev/null
nbdinfo --map "$uri" >/dev/null
nbdinfo --map --totals "$uri" >/dev/null
nbdinfo --can trim "$uri" || true
nbdinfo "nbd+unix:///no-such-export?socket=$work/rec.sock" >/dev/null 2>&1 || true
nbdsh -c '
h.add_meta_context("base:allocation")
h.connect_uri("'"$uri"'")
h.pread(512, 0)
h.pwrite(b"x" * 512, 1024, nbd.CMD_FLAG_FUA)
h.flush()
h.trim(4096, 8192)
h.zero(4096, 65536)
try:
    h.zero(4096, 131072, nbd.CMD_FLAG_FAST_ZERO)
except nbd.Error:
    pass
h.cache(4096, 0)
h.block_status(65536, 0, lambda *args: 0)
try:
    h.pread(512, 2 << 20)
except nbd.Error:
    pass
'
nbdsh --opt-mode -u "$uri" -c '
h.opt_list(lambda name, description: 0)
h.opt_list_meta_context(lambda name: 0)
h.opt_info()
h.opt_go()
h.pread(4096, 0)
'
nbdsh -c '
h.set_handshake_flags(0)
h.connect_uri("'"$uri"'")
h.pread(512, 512)
h.shutdown()
'
nbdsh -c '
h.set_request_structured_replies(False)
h.connect_uri("'"$uri"'")
h.pwrite(b"y" * 4096, 8192)
h.pread(4096, 8192)
'
qemu-io -f raw -c 'read 0 64k' -c 'write -P 0xab 4096 8192' -c 'flush' -c 'discard 0 4096' -c 'write -z 65536 4096' \
    -c 'aio_read 0 4k' -c 'aio_flush' "$uri" >/dev/null
qemu-img info "$uri" >/dev/null
qemu-img map --output=json "$uri" >/dev/null
nbdcopy "$uri" "$work/copy.img"
fio --name=seed --ioengine=nbd --uri="$uri" --rw=randrw --bs=4k --size=1M --io_size=16k --iodepth=4 \
    --output=/dev/null
stop_pid "${pids[-1]}"
stop_pid "$serve"

# The client's whole stream is a handshake seed; what follows GO or EXPORT_NAME, behind the byte
# naming the negotiation, a transmission seed.
python3 - "$work/nbd" "$work/split" <<'PY'
import os, struct, sys
source, out = sys.argv[1:3]
os.makedirs(out, exist_ok=True)
for name in sorted(os.listdir(source)):
    if not name.endswith(".client"):
        continue
    data = open(os.path.join(source, name), "rb").read()
    open(os.path.join(out, name[:-7] + ".handshake"), "wb").write(data[:16384])
    at, setup = 4, 0
    while at + 16 <= len(data):
        magic, option, length = struct.unpack(">QII", data[at:at + 16])
        if magic != 0x49484156454F5054:
            break
        at += 16 + length
        if option == 8:
            setup |= 1      # STRUCTURED_REPLY
        elif option == 10 and setup & 1:
            setup |= 2      # SET_META_CONTEXT
        elif option in (1, 7):
            if option == 1:
                setup |= 4  # EXPORT_NAME
            rest = data[at:at + 8191]
            if rest:
                open(os.path.join(out, name[:-7] + ".transmission"), "wb").write(bytes([setup]) + rest)
            break
PY
for file in "$work"/split/*.handshake; do keep nbd-handshake "$file"; done
for file in "$work"/split/*.transmission; do keep nbd-transmission "$file"; done

# --- Control: the CLI's requests and the daemon's answers ---------------------------------------
truncate -s 8M "$work/old.img" "$work/new.img" "$work/new2.img"
printf 'control seed' | dd of="$work/old.img" bs=1 seek=1048576 conv=notrunc status=none
mkdir -m 700 "$work/run" "$work/rec-run"
"$binary" build m0 --source "$work/old.img" --target missing --listen "unix:$work/m0.sock" --run-dir "$work/run" \
    --bitmap "$work/m0.bitmap" --region-size 64K --log-level warning &
daemon=$!
pids+=($daemon)
wait_for_socket "$work/run/m0.ctl"
record "$work/rec-run/m0.ctl" "$work/run/m0.ctl" "$work/control"
cli() { "$binary" "$@" --run-dir "$work/rec-run" >/dev/null 2>&1 || true; }
cli status m0
cli status m0 --json
cli detail m0 --json
cli add m0 "$work/new.img"
cli wait m0
cli speed m0 --min 2000 --max 50000
cli speed m0 --min 1000 --max unlimited
cli check m0
cli check m0 --repair --json
cli fail m0
cli remove m0
cli add m0 "$work/no such file"
cli add m0 "$work/new2.img"
cli wait m0
cli stop m0
wait "$daemon" 2>/dev/null || true
stop_pid "${pids[-1]}"
for file in "$work"/control/*.client "$work"/control/*.server; do keep control "$file"; done
keep bitmap "$work/m0.bitmap"   # stopped cleanly, target recorded with its write trace

# --- Bitmap files -------------------------------------------------------------------------------
# In use: killed with SIGKILL while the copy is held to 1 MiB/s.
truncate -s 16M "$work/old2.img" "$work/new3.img"
dd if=/dev/urandom of="$work/old2.img" bs=1M count=16 conv=notrunc status=none
"$binary" build m1 --source "$work/old2.img" --target "$work/new3.img" --listen "unix:$work/m1.sock" \
    --run-dir "$work/run" --bitmap "$work/m1.bitmap" --region-size 64K --speed-min 1000 --speed-max 1024 \
    --log-level warning &
m1=$!
pids+=($m1)
wait_for_socket "$work/run/m1.ctl"
sleep 2
kill -9 "$m1"
wait "$m1" 2>/dev/null || true
rm -f "$work/run/m1.ctl"
keep bitmap "$work/m1.bitmap"
# Degraded, stopped cleanly: no target recorded.
"$binary" build m2 --source "$work/old2.img" --target missing --listen "unix:$work/m2.sock" \
    --run-dir "$work/run" --bitmap "$work/m2.bitmap" --log-level warning &
m2=$!
pids+=($m2)
wait_for_socket "$work/run/m2.ctl"
"$binary" stop m2 --run-dir "$work/run" >/dev/null
wait "$m2" 2>/dev/null || true
keep bitmap "$work/m2.bitmap"
# Four pages: 384 MiB in 4 KiB regions, stopped cleanly in sync.
truncate -s 384M "$work/big-old.img" "$work/big-new.img"
"$binary" build m3 --source "$work/big-old.img" --target "$work/big-new.img" --listen "unix:$work/m3.sock" \
    --run-dir "$work/run" --bitmap "$work/m3.bitmap" --region-size 4K --log-level warning &
m3=$!
pids+=($m3)
wait_for_socket "$work/run/m3.ctl"
"$binary" wait m3 --run-dir "$work/run" >/dev/null
"$binary" stop m3 --run-dir "$work/run" >/dev/null
wait "$m3" 2>/dev/null || true
keep bitmap "$work/m3.bitmap"

for target in nbd-handshake nbd-transmission control bitmap; do
    echo "fuzz-seeds: Fuzz/Corpus/$target: $(ls "Fuzz/Corpus/$target" | wc -l) files"
done
