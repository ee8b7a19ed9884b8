#!/bin/sh
# tools/bench.py scaling (usage and environment: tools/bench.py scaling --help).
exec python3 "$(dirname "$0")/bench.py" scaling "$@"
