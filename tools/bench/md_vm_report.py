"""What a md-vm boot reports: the guest's "@@ KEY value" console lines collected into its
result.json (with the host's md5s, qemu's outcome and the recovery's progress over time from the
"%% PROGRESS" lines), the scenarios side by side (recovery time, fio MiB/s during the recovery,
check, md5s) with the ratios to md, and the JSON of all runs.
"""
from __future__ import annotations

import json
import os

from .results import median_min_max, write_json

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
NOTE = ("All ran under qemu TCG (software emulation, 2 vCPUs), one boot per run, in the same VM "
        "configuration on the same two virtio disks (host files, cache=none): the figures compare "
        "md and blockmirror with each other, not with hardware. md's recovery and check are capped "
        "by its speed_limit_max (default 200000 KiB/s); the engine has no maximum by default.")


def console_lines(console: str) -> list[str]:
    """The guest's console, line by line (carriage returns dropped, bad bytes replaced)."""
    with open(console, "rb") as f:
        return f.read().decode("utf-8", "replace").replace("\r", "").splitlines()


def markers(lines: list[str]) -> dict:
    """The "@@ KEY value" lines (anywhere in a line) as {KEY: value}: a key printed twice keeps
    the last value; FAIL lines are collected in a list."""
    result: dict = {"FAIL": []}
    for line in lines:
        at = line.find("@@ ")
        if at < 0:
            continue
        key, _, value = line[at + 3:].strip().partition(" ")
        if key == "FAIL":
            result["FAIL"].append(value)
        elif key:
            result[key] = value
    return result


def progress(lines: list[str], span: str | None) -> list[list[float]]:
    """The recovery's progress from the "%% PROGRESS UPTIME DONE TOTAL" lines: [seconds since the
    recovery started, DONE / TOTAL], ending with [its length, 1]; span is RECOVERY_SPAN
    ("t=T0..T1", guest uptime). Empty without a span."""
    try:
        t0, t1 = (float(x) for x in (span or "").removeprefix("t=").split(".."))
    except ValueError:
        return []
    out = []
    for line in lines:
        at = line.find("%% PROGRESS ")
        words = line[at + 12:].split() if at >= 0 else []
        if len(words) == 3 and all(w.replace(".", "", 1).isdigit() for w in words) and float(words[2]) > 0:
            out.append([round(float(words[0]) - t0, 2), round(float(words[1]) / float(words[2]), 5)])
    return [p for p in out if 0 <= p[0] <= t1 - t0] + [[round(t1 - t0, 2), 1.0]]


def boot_result(found: dict, qemu_status: int, limit: int, md5_old: str, md5_new: str, wall: float) -> dict:
    """A boot's result.json: the guest's markers, the host's md5s after power-off, qemu's wall
    time, and a FAIL for a VM that had to be killed, failed, or did not report its STATUS."""
    r = dict(found, FAIL=list(found["FAIL"]), MD5_OLD=md5_old, MD5_NEW=md5_new,
             LEGS_EQUAL="yes" if md5_old == md5_new else "no", QEMU_WALL_S=f"{wall:.1f}")
    if qemu_status in (124, 137):
        r["FAIL"].append(f"the VM did not power off within {limit} s (killed)")
    elif qemu_status != 0:
        r["FAIL"].append(f"qemu exited with status {qemu_status}")
    if "STATUS" not in r:
        r["FAIL"].append("no STATUS line from the guest")
    for key, host in (("GUEST_MD5_OLD", md5_old), ("GUEST_MD5_NEW", md5_new)):
        if r.get(key) and r[key] != host:
            r["FAIL"].append(f"the guest's md5 ({key}) differs from the host's after power-off")
    return r


def write_sorted(path: str, obj: dict) -> None:
    """A JSON file with its keys sorted (markers.json, result.json)."""
    write_json(path, dict(sorted(obj.items())))


def scenario_ok(r: dict) -> bool:
    """Every step succeeded (STATUS 0) and nothing failed; the legs are compared by compare."""
    return r.get("STATUS") == "0" and not r["FAIL"]


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _nums(runs: list[dict], key: str) -> list[float]:
    return [n for n in (_num(r.get(key)) for r in runs) if n is not None]


def _cell(runs: list[dict], key: str, fmt: str | None) -> str:
    """A number's median (and min-max, n over several runs), or the distinct texts."""
    if fmt:
        nums = _nums(runs, key)
        med, low, high = median_min_max(nums)
        if med is None:
            return "-"
        return fmt.format(med) + (f" ({fmt.format(low)}-{fmt.format(high)}, n={len(nums)})" if len(runs) > 1 else "")
    texts: list[str] = []
    for v in (r.get(key) for r in runs):
        v = "-" if v in (None, "") else str(v)
        if v not in texts:
            texts.append(v)
    return " / ".join(texts)


def _table(groups: dict[str, list[dict]]) -> list[str]:
    rows = [[""] + list(groups)] + [[label] + [_cell(runs, key, fmt) for runs in groups.values()]
                                    for label, key, fmt, _ in ROWS]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]))]
    return ["".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def _failures(runs: list[tuple[str, dict]]) -> list[str]:
    """A line per failure of a run (FAIL lines, a non-zero status, OLD and NEW differing)."""
    out = []
    for path, r in runs:
        name, where = r.get("SCENARIO", "?"), os.path.dirname(path)
        out += [f"FAILED {name} ({where}): {failure}" for failure in r.get("FAIL", [])]
        if r.get("STATUS") != "0" and not r.get("FAIL"):
            out.append(f"FAILED {name} ({where}): guest status {r.get('STATUS')}")
        if r.get("LEGS_EQUAL") != "yes":
            out.append(f"FAILED {name} ({where}): OLD and NEW differ after the run")
    return out


def _ratios(groups: dict[str, list[dict]]) -> list[str]:
    """md-blockmirror/md and engine/md, by median, of the rows with a better direction."""
    md = groups.get("md")
    out = []
    for other in ("md-blockmirror", "engine"):
        if not md or other not in groups:
            continue
        parts = []
        for _, key, _, better in ROWS:
            a, b = median_min_max(_nums(md, key))[0], median_min_max(_nums(groups[other], key))[0]
            if better and a and b is not None:
                parts.append(f"{key.split('_')[0].lower()} {b / a:.2f} ({better} is better)")
        if parts:
            out.append(f"ratio {other}/md: " + ", ".join(parts))
    return out


def write_results(path: str, meta: dict, paths: list[str], lines: list[str], ok: bool) -> None:
    """The JSON of a md-vm run: meta, every boot's result.json (with its scenario's round), the
    side-by-side table's lines and whether it all succeeded."""
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append({"dir": os.path.basename(os.path.dirname(p)), "result": json.load(f)})
    write_json(path, {"meta": meta, "runs": runs, "compare": lines, "ok": ok})


def compare(paths: list[str]) -> tuple[list[str], bool]:
    """The comparison of the runs' result.json files: its lines, and whether every run succeeded
    with equal legs and (several runs) the same final contents (same data, same writes)."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append((path, json.load(f)))
    groups: dict[str, list[dict]] = {}
    for _, r in runs:
        groups.setdefault(r.get("SCENARIO", "?"), []).append(r)
    lines = _table(groups)
    if len(runs) > len(groups):
        lines.append("(numbers: median (min-max, n) when a scenario ran more than once)")
    failures = _failures(runs)
    lines += failures
    same_end = len({r.get("MD5_OLD") for _, r in runs if r.get("MD5_OLD")}) == 1
    if len(runs) > 1:
        lines.append("final contents: the same after every run (same OLD data, same fio writes: seeded "
                     "offsets, offset-stamped data)" if same_end else
                     "FAILED: the final contents differ between runs although data and writes were the same")
    lines += _ratios(groups)
    lines.append(NOTE)
    return lines, not failures and (same_end or len(runs) < 2)
