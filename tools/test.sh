#!/usr/bin/env bash
# Runs every test: installs what is missing (tools/setup.sh), builds, then `swift test`, then each
# fuzz target for a short, fixed number of executions (tools/fuzz.sh).
# Usage: tools/test.sh [extra swift test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
swift build --build-tests
swift test --no-parallel "$@"
# Fuzzing: each libFuzzer target for a fixed number of executions on its corpus (Fuzz/README.md).
tools/fuzz.sh all --runs 5000 --fresh
