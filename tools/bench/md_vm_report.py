"""What a md-vm boot reports: the guest's "@@ KEY value" console lines collected into its
result.json (with the host's md5s, qemu's outcome, the recovery's progress over time from the
"%% PROGRESS" lines and fio's write latency percentiles), the scenarios side by side (recovery
time, fio MiB/s and latency during the recovery, guest and daemon CPU, check, md5s) with the
ratios to md and issue 13's goal, and the JSON of all runs.
"""
from __future__ import annotations

import json
import os

from . import fio
from .results import median_min_max, write_json

ROWS = [
    # label, key, numeric format (None: text), better (for the ratios)
    ("recovery: add .. wait returned (s)", "RECOVERY_S", "{:.2f}", "lower"),
    ("copy: first .. last write on vdb (s)", "COPY_S", "{:.2f}", "lower"),
    ("recovery MiB/s (size / add..wait)", "RECOVERY_MIBS", "{:.1f}", None),
    ("fio MiB/s (its writes, during the recovery)", "FIO_MIBS", "{:.1f}", "higher"),
    ("fio run time (s)", "FIO_S", "{:.2f}", None),
    ("fio ended before the recovery", "FIO_ENDED_FIRST", None, None),
    ("fio write latency p50 (ms)", "FIO_CLAT_P50_MS", "{:.2f}", None),
    ("fio write latency p99 (ms)", "FIO_CLAT_P99_MS", "{:.2f}", None),
    ("guest CPU busy during the recovery (vCPUs)", "GUEST_CPU_BUSY", "{:.2f}", None),
    ("blockmirror daemon CPU in the recovery (vCPUs)", "DAEMON_CPU", "{:.2f}", None),
    ("kernel NBD client", "NBD_CLIENT", None, None),
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
        "by its speed_limit_max (default 200000 KiB/s); the engine has no maximum by default. "
        "md and engine-nbd run the same fio job (libaio, O_DIRECT) on /dev/md0 and on /dev/nbd0 (the "
        "guest kernel's NBD client on the engine's unix socket); engine runs it through fio's nbd "
        "engine (libnbd in fio's process) on the same socket. A busy vCPU is a busy host core; the guest "
        "reads the clock from the TSC (CLOCKSOURCE). With PROGRESS=1 the guest polls the recovery's "
        "progress every 0.5 s (the engine's through its metrics endpoint, a wget each): the CPU rows "
        "include that.")
GOAL = {"FIO_MIBS": 0.8, "RECOVERY_S": 1.0}  # issue 13: fio >= 0.8x md's, recovery time <= md's
ENGINES = ("md-blockmirror", "engine-nbd", "engine")


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


def fio_marks(files_dir: str, scenario: str) -> dict:
    """The write latency percentiles (p50, p99) of the guest's fio run, from its JSON among the
    guest's files (none if it is missing or unreadable)."""
    path = os.path.join(files_dir, f"fio-{scenario}.json")
    try:
        found = fio.clat_ms(path, "write", ("50.000000", "99.000000"))
    except fio.PARSE_ERRORS:
        return {}
    return {f"FIO_CLAT_P{p.split('.')[0]}_MS": f"{v:.2f}" for p, v in found.items()}


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


def _median_ratio(groups: dict[str, list[dict]], other: str, key: str) -> float | None:
    """other's median over md's median of a row (None without both)."""
    a, b = median_min_max(_nums(groups["md"], key))[0], median_min_max(_nums(groups[other], key))[0]
    return b / a if a and b is not None else None


def _ratios(groups: dict[str, list[dict]]) -> list[str]:
    """Each other scenario over md, by median, of the rows with a better direction; for the
    engine's two, whether they meet issue 13's goal (GOAL)."""
    out = []
    for other in ENGINES:
        if "md" not in groups or other not in groups:
            continue
        ratios = {key: (r, better) for _, key, _, better in ROWS
                  if better and (r := _median_ratio(groups, other, key)) is not None}
        if ratios:
            out.append(f"ratio {other}/md: " + ", ".join(
                f"{key.split('_')[0].lower()} {r:.2f} ({better} is better)" for key, (r, better) in ratios.items()))
        if other != "md-blockmirror" and all(key in ratios for key in GOAL):
            fio_r, rec_r = ratios["FIO_MIBS"][0], ratios["RECOVERY_S"][0]
            met = fio_r >= GOAL["FIO_MIBS"] and rec_r <= GOAL["RECOVERY_S"]
            out.append(f"goal {other} (fio >= {GOAL['FIO_MIBS']}x md's, recovery <= md's): fio {fio_r:.2f}x, "
                       f"recovery {rec_r:.2f}x: {'met' if met else 'missed'}")
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
