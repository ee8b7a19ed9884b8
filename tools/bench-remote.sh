#!/bin/sh
# tools/bench.py remote (usage and environment: tools/bench.py remote --help).
exec python3 "$(dirname "$0")/bench.py" remote "$@"
