#!/bin/sh
# tools/bench.py qd-sweep (usage and environment: tools/bench.py qd-sweep --help).
exec python3 "$(dirname "$0")/bench.py" qd-sweep "$@"
