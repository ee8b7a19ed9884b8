#!/bin/sh
# tools/bench.py recovery (usage and environment: tools/bench.py recovery --help).
exec python3 "$(dirname "$0")/bench.py" recovery "$@"
