#!/bin/sh
# tools/bench.py crash-cost (usage and environment: tools/bench.py crash-cost --help).
exec python3 "$(dirname "$0")/bench.py" crash-cost "$@"
