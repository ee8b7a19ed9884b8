#!/usr/bin/env bash
# Installs BlockMirror on this machine (Debian 12, as root): the release binary, the systemd units
# (blockmirror@.service for one mirror, blockmirror-plan@.service for a migration plan), man pages
# generated from the command-line help, and bash/zsh/fish completions. Checks the units with
# `systemd-analyze verify` and reloads systemd if it runs.
#
# Usage: tools/install.sh            (PREFIX=/usr/local, DESTDIR= for a staging root)
#   /etc/blockmirror/NAME.conf   -> systemctl enable --now blockmirror@NAME   (dist/systemd/example.conf)
#   /etc/blockmirror/NAME.toml   -> systemctl enable --now blockmirror-plan@NAME   (dist/systemd/example.toml, docs/PLAN.md)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
root=$DESTDIR

echo "install: building the release binary (swift build -c release)"
swift build -c release --scratch-path .build-release --product blockmirror 2>&1 | grep -E "error|warning: unre|Compiling|Build" | tail -3
swift build -c release --scratch-path .build-release --product generate-manual 2>&1 | grep -E "error" || true
binary=.build-release/release/blockmirror

install -D -m 0755 "$binary" "$root$PREFIX/bin/blockmirror"
echo "install: $root$PREFIX/bin/blockmirror"

# Units: the binary's path as installed.
units=$root/etc/systemd/system
install -d -m 0755 "$units"
for unit in dist/systemd/*.service; do
    sed "s|/usr/local/bin/blockmirror|$PREFIX/bin/blockmirror|g" "$unit" > "$units/$(basename "$unit")"
    chmod 0644 "$units/$(basename "$unit")"
    echo "install: $units/$(basename "$unit")"
done
install -d -m 0755 "$root/etc/blockmirror"
install -D -m 0644 -t "$root$PREFIX/share/doc/blockmirror" dist/systemd/example.conf dist/systemd/example.toml docs/PLAN.md

# Man pages, one per verb, from the ArgumentParser help (swift-argument-parser's generate-manual).
man=$root$PREFIX/share/man/man1
install -d -m 0755 "$man"
.build-release/release/generate-manual "$binary" --multi-page --authors "BlockMirror" -o "$man"
echo "install: $(ls "$man" | grep -c '^blockmirror') man pages in $man"

# Completions.
install -d -m 0755 "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$binary" --generate-completion-script bash > "$root/usr/share/bash-completion/completions/blockmirror"
"$binary" --generate-completion-script zsh > "$root/usr/share/zsh/vendor-completions/_blockmirror"
"$binary" --generate-completion-script fish > "$root/usr/share/fish/vendor_completions.d/blockmirror.fish"
echo "install: bash, zsh and fish completions"

if [[ -z $DESTDIR ]]; then
    command -v mandb >/dev/null && mandb -q 2>/dev/null || true
    # --man=no where man(1) is missing: verify then only checks what systemd itself reads.
    check_man=no; command -v man >/dev/null && check_man=yes
    systemd-analyze verify --man=$check_man "$units/blockmirror@.service" "$units/blockmirror-plan@.service" 2>&1 \
        | sed 's/^/install: systemd-analyze: /' || true
    if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
fi
echo "install: done"
