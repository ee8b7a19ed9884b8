#!/usr/bin/env bash
# How much a crash costs: regions a restart must copy again after kill -9 of an in-sync mirror.
#
# An in-sync mirror (SIZE of random data, REGION regions, write-intent bitmap) takes fio 4k random
# writes QD32 for 3 s through NBD; the daemon is killed with SIGKILL (a) while the writes run and
# (b) IDLE seconds after they stopped. The restart logs how many regions the bitmap marks.
# Usage: tools/bench-crash-cost.sh   (env: SIZE=512M REGION=1M IDLE=5 BLOCKMIRROR=path)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SIZE=${SIZE:-512M} REGION=${REGION:-1M} IDLE=${IDLE:-5}
if [[ -z "${BLOCKMIRROR:-}" ]]; then
    (cd "$here/.." && swift build -c release --product blockmirror >/dev/null)
    BLOCKMIRROR="$here/../.build/release/blockmirror"
fi
work=$(mktemp -d /var/tmp/bm-crash.XXXXXX)
pid=""
cleanup() { [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null; [[ -n "${KEEP:-}" ]] || rm -rf "$work"; }
trap cleanup EXIT
fio --name=fill --rw=write --bs=1M --size="$SIZE" --filename="$work/old.img" --refill_buffers >/dev/null
cp "$work/old.img" "$work/new.img"

start() {  # start the mirror; wait for its URI line and for in-sync
    "$BLOCKMIRROR" build m0 --source "$work/old.img" --target "$work/new.img" --bitmap "$work/bitmap" \
        --region-size "$REGION" --listen "unix:$work/nbd.sock" --run-dir "$work/run" >"$work/out" 2>"$work/log" &
    pid=$!
    until grep -q nbd+unix "$work/out" 2>/dev/null; do sleep 0.1; done
    until "$BLOCKMIRROR" status m0 --json --run-dir "$work/run" | grep -q '"state":"in-sync"'; do sleep 0.2; done
}
restart_and_count() {  # sets $counted to "N of M" regions the restart found dirty
    start
    local dirty total
    dirty=$(grep -o 'dirty=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
    total=$("$BLOCKMIRROR" status m0 --json --run-dir "$work/run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["regionsTotal"])')
    counted="${dirty:-0} of $total"
}
writes() { fio --name=w --ioengine=nbd --uri="nbd+unix:///m0?socket=$work/nbd.sock" --rw=randwrite --bs=4k --iodepth=32 \
               --size="$SIZE" --time_based --runtime=3 "$@" >/dev/null 2>&1 || true; }

start
writes & fiopid=$!
sleep 2.5; kill -9 "$pid"; wait "$fiopid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
restart_and_count; during=$counted
writes
sleep "$IDLE"; kill -9 "$pid"; wait "$pid" 2>/dev/null || true
restart_and_count; idle=$counted
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
cmp "$work/old.img" "$work/new.img" && same=identical || same=DIFFERENT
echo "crash cost, $SIZE in $REGION regions, fio 4k randwrite QD32:"
echo "  kill -9 during the writes:           $during regions to copy again"
echo "  kill -9 ${IDLE} s after the writes stopped: $idle regions to copy again"
echo "  after the resumes, OLD and NEW are $same"
