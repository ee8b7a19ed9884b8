#!/usr/bin/env python3
"""Helpers for tools/md-vm.sh (kernel md in a qemu VM next to the blockmirror engine).

  md_vm.py modorder MODDIR NAME...
      The .ko files (paths relative to MODDIR) that load NAME... in dependency order, from
      MODDIR/modules.dep; built-in modules are skipped (said on stderr), unknown ones are an error.

  md_vm.py random-image PATH SIZE SEED
      Writes SIZE bytes of pseudo-random data derived from SEED (the same bytes for the same seed,
      so OLD's md5 is the same on every machine and every run).

  md_vm.py partitions PATH MIB...
      Writes an MBR partition table with primary partitions of MIB MiB each, from 1 MiB on.

  md_vm.py markers CONSOLE_LOG OUT_JSON
      Collects the "@@ KEY value" lines of a guest's console into {KEY: value} (a key printed
      twice keeps the last value; FAIL lines are collected in a list).

  md_vm.py compare RESULT_JSON...
      Prints the scenarios side by side (recovery time, fio MiB/s during the recovery, check,
      md5s) and the ratios engine/md; exits 1 if a run failed, its legs differ, or the final
      contents differ between scenarios (they get the same data and the same writes).
"""
import hashlib
import json
import os
import struct
import sys


def modorder(moddir, names):
    dep = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            key, _, value = line.partition(":")
            dep[key.strip()] = value.split()

    def short(path):
        return os.path.basename(path).split(".ko")[0].replace("-", "_")

    by_name = {short(k): k for k in dep}
    builtin = set()
    path = os.path.join(moddir, "modules.builtin")
    if os.path.exists(path):
        with open(path) as f:
            builtin = {short(line.strip()) for line in f if line.strip()}
    out, seen = [], set()

    def visit(key):
        if key in seen:
            return
        seen.add(key)
        for d in dep[key]:
            visit(d)
        out.append(key)

    for name in names:
        n = name.replace("-", "_")
        if n in builtin:
            print(f"md_vm: module {name} is built into the kernel", file=sys.stderr)
            continue
        if n not in by_name:
            sys.exit(f"md_vm: no module {name} in {moddir}/modules.dep")
        visit(by_name[n])
    print("\n".join(out))


def random_image(path, size, seed):
    # SHAKE-256 as a stream cipher stand-in: deterministic, incompressible, ~500 MB/s.
    chunk = 16 << 20
    written = 0
    with open(path, "wb") as f:
        index = 0
        while written < size:
            n = min(chunk, size - written)
            f.write(hashlib.shake_256(f"{seed}:{index}".encode()).digest(n))
            written += n
            index += 1


def partitions(path, sizes_mib):
    entries = b""
    start = 2048
    for size in sizes_mib:
        count = size * 2048
        # status, CHS first (unused), type 0xfd (Linux raid autodetect), CHS last, LBA start, sectors
        entries += struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0xFD, b"\xfe\xff\xff", start, count)
        start += count
    entries = entries.ljust(64, b"\0")
    with open(path, "r+b") as f:
        f.seek(440)
        f.write(struct.pack("<I", 0x424D4D56) + b"\0\0" + entries + b"\x55\xaa")


def markers(log, out):
    result = {"FAIL": []}
    with open(log, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").strip("\r\n")
            at = line.find("@@ ")
            if at < 0:
                continue
            key, _, value = line[at + 3:].strip().partition(" ")
            if key == "FAIL":
                result["FAIL"].append(value)
            elif key:
                result[key] = value
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


ROWS = [
    # label, key, numeric format (None: text), better (for the ratios)
    ("recovery: add .. wait returned (s)", "RECOVERY_S", "{:.2f}", "lower"),
    ("copy: first .. last write on vdb (s)", "COPY_S", "{:.2f}", "lower"),
    ("recovery MiB/s (size / add..wait)", "RECOVERY_MIBS", "{:.1f}", None),
    ("fio MiB/s (its writes, during the recovery)", "FIO_MIBS", "{:.1f}", "higher"),
    ("fio run time (s)", "FIO_S", "{:.2f}", None),
    ("fio ended before the recovery", "FIO_ENDED_FIRST", None, None),
    ("check (s)", "CHECK_S", "{:.2f}", "lower"),
    ("check mismatch_cnt", "MISMATCH_CNT", None, None),
    ("blockmirror start-up: first run (s)", "BM_STARTUP_COLD_S", "{:.2f}", None),
    ("blockmirror start-up: later runs (s)", "BM_STARTUP_S", "{:.2f}", None),
    ("speed limits", "SPEED_LIMITS", None, None),
    ("stop says", "STOP", None, None),
    ("md5 vda (OLD) after", "MD5_OLD", None, None),
    ("md5 vdb (NEW) after", "MD5_NEW", None, None),
    ("legs equal", "LEGS_EQUAL", None, None),
    ("guest status (0 = every step ok)", "STATUS", None, None),
]


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def cell(runs, key, fmt):
    values = [r.get(key) for r in runs]
    if fmt:
        nums = [num(v) for v in values if num(v) is not None]
        if not nums:
            return "-"
        text = fmt.format(median(nums))
        if len(runs) > 1:
            text += " (" + fmt.format(min(nums)) + "-" + fmt.format(max(nums)) + f", n={len(nums)})"
        return text
    texts = []
    for v in values:
        v = "-" if v in (None, "") else str(v)
        if v not in texts:
            texts.append(v)
    return " / ".join(texts)


def compare(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        r["_path"] = path
        runs.append(r)
    groups = {}
    for r in runs:
        groups.setdefault(r.get("SCENARIO", "?"), []).append(r)
    names = list(groups)
    table = [[""] + names]
    for label, key, fmt, _ in ROWS:
        table.append([label] + [cell(groups[n], key, fmt) for n in names])
    widths = [max(len(row[i]) for row in table) + 2 for i in range(len(table[0]))]
    for row in table:
        print("".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if len(runs) > len(groups):
        print("(numbers: median (min-max, n) when a scenario ran more than once)")

    bad = False
    for r in runs:
        name = r.get("SCENARIO", "?")
        where = os.path.dirname(r["_path"])
        for failure in r.get("FAIL", []):
            print(f"FAILED {name} ({where}): {failure}")
            bad = True
        if r.get("STATUS") != "0":
            bad = True
            if not r.get("FAIL"):
                print(f"FAILED {name} ({where}): guest status {r.get('STATUS')}")
        if r.get("LEGS_EQUAL") != "yes":
            print(f"FAILED {name} ({where}): OLD and NEW differ after the run")
            bad = True
    finals = {r.get("MD5_OLD") for r in runs if r.get("MD5_OLD")}
    if len(runs) > 1:
        if len(finals) == 1:
            print("final contents: the same after every run (same OLD data, same fio writes: seeded "
                  "offsets, offset-stamped data)")
        else:
            bad = True
            print("FAILED: the final contents differ between runs although data and writes were the same")

    md = groups.get("md")
    for other in ("md-blockmirror", "engine"):
        if not md or other not in groups:
            continue
        parts = []
        for label, key, fmt, better in ROWS:
            if not better:
                continue
            a = [num(r.get(key)) for r in md if num(r.get(key)) is not None]
            b = [num(r.get(key)) for r in groups[other] if num(r.get(key)) is not None]
            if a and b and median(a):
                parts.append(f"{key.split('_')[0].lower()} {median(b) / median(a):.2f} ({better} is better)")
        if parts:
            print(f"ratio {other}/md: " + ", ".join(parts))
    print("All ran under qemu TCG (software emulation, 2 vCPUs), one boot per run, in the same VM "
          "configuration on the same two virtio disks (host files, cache=none): the figures compare "
          "md and blockmirror with each other, not with hardware. md's recovery and check are capped "
          "by its speed_limit_max (default 200000 KiB/s); the engine has no maximum by default.")
    return 1 if bad else 0


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "modorder":
        modorder(args[0], args[1:])
    elif cmd == "random-image":
        random_image(args[0], int(args[1]), args[2])
    elif cmd == "partitions":
        partitions(args[0], [int(a) for a in args[1:]])
    elif cmd == "markers":
        markers(args[0], args[1])
    elif cmd == "compare":
        return compare(args)
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
