#!/bin/sh
# tools/bench.py passthrough (usage and environment: tools/bench.py passthrough --help).
exec python3 "$(dirname "$0")/bench.py" passthrough "$@"
