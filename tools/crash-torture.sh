#!/usr/bin/env bash
# Crash torture of the mirror daemon: ROUNDS rounds of a journaled random NBD workload during a
# recovery, kill -9 of `blockmirror build` at random moments (during the copy, at a bitmap
# write, during add, right after add, while degraded, during check/repair, during stop, during
# the resume of a restart), restarts with the same bitmap and target, and at the end: in sync,
# check = 0, stop says "in sync", every acknowledged write found on OLD (and on NEW at every
# kill where it was acknowledged on both legs), NEW == OLD byte for byte.
# How a round goes and what counts as a failure: tools/lib/crash_torture.py.
#
# Usage: tools/crash-torture.sh [--rounds N] [--seed S] [--size 64M] [--kills MIN-MAX]
#                               [--work DIR] [--keep] [--max-kept N] [--summary-json FILE] [--quiet]
# Environment:
#   BLOCKMIRROR_BIN=   the binary to torture (default: swift build -c release, .build-release)
#   PYTHON=/usr/bin/python3   Debian's python3, where python3-libnbd installs `import nbd`
# Prints one line per round and a summary table; exits 1 if any round failed, keeping the failing
# rounds' directories (images, journals, daemon logs, round.log) under /var/tmp.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}

if ! "$PYTHON" -c 'import nbd' 2>/dev/null; then
    echo "crash-torture: $PYTHON cannot import nbd: apt-get install python3-libnbd (tools/setup.sh installs it)" >&2
    exit 1
fi
if [[ -z "${BLOCKMIRROR_BIN:-}" ]]; then
    (cd "$ROOT" && swift build -c release --scratch-path .build-release --product blockmirror >&2)
    BLOCKMIRROR_BIN=$ROOT/.build-release/release/blockmirror
fi
[[ -x $BLOCKMIRROR_BIN ]] || { echo "crash-torture: $BLOCKMIRROR_BIN is not an executable" >&2; exit 1; }
exec "$PYTHON" "$ROOT/tools/lib/crash_torture.py" --bin "$BLOCKMIRROR_BIN" "$@"
