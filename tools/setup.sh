#!/usr/bin/env bash
# Installs what BlockMirror needs on Debian 12 (run as root): libaio for the build, the NBD
# clients and peers the tests and benchmarks drive, and checks for the Swift toolchain.
set -euo pipefail

# nbdfuse is in libnbd-bin on Debian 12 (no package of its own: listing it reinstalled it on every run).
packages=(libaio-dev fio qemu-utils libnbd-bin python3-libnbd nbdkit fuse3 e2fsprogs util-linux kmod python3 curl tmux systemd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Swift: on PATH, or the toolchain at /opt/swift used by this project's machines.
if ! command -v swift >/dev/null 2>&1; then
    for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
        [[ -x $dir/swift ]] && export PATH="$dir:$PATH" && break
    done
fi
if ! command -v swift >/dev/null 2>&1; then
    echo "setup: no Swift toolchain found: install Swift 6.1 or later (swift.org/install/linux) and put it on PATH" >&2
    exit 1
fi

# Loop devices and FUSE are needed by the filesystem tests.
[[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
[[ -e /dev/loop-control ]] || modprobe loop 2>/dev/null || true
