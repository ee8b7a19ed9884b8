#!/bin/sh
# tools/bench.py md-vm (usage and environment: tools/bench.py md-vm --help).
exec python3 "$(dirname "$0")/bench.py" md-vm "$@"
