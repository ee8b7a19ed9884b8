#!/bin/sh
# tools/bench.py report: every benchmark in one go, a folder with REPORT.md and PNG plots
# (usage and environment: tools/bench.py report --help).
exec python3 "$(dirname "$0")/bench.py" report "$@"
