"""Results: the samples (a TSV in the work dir, kept on failure), medians and min-max, the JSON
files, and the description of the machine and the build that goes into them.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess

from . import ROOT
from .log import log
from .packages import first_line, fs_type


class Samples:
    """The measured values: in memory for the report, and one TSV line each in the work dir (kept
    with a failed run's logs). A value is a number, None (a failed run) or, with done=False, the
    time a run was given before it was reported as not done (written ">SECONDS")."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[tuple[tuple[str, ...], float | None, bool]] = []
        open(path, "w").close()

    def add(self, key: tuple[str, ...], value: float | None, done: bool = True) -> None:
        self.rows.append((key, value, done))
        shown = "-" if value is None else (f"{value}" if done else f">{value}")
        with open(self.path, "a") as f:
            f.write("\t".join((*key, shown)) + "\n")


def median_min_max(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Median, minimum and maximum of the successful runs (None for all three without one)."""
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def write_json(path: str, obj) -> None:
    """JSON with an indent of 2 and a final newline (the results files)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def machine_meta(workdir_base: str) -> dict:
    """Where the run happened: the work dir's file system and device, kernel, CPUs (count and
    model), memory, and the virtualization systemd-detect-virt names (none on bare metal)."""
    device = first_line("findmnt", "-n", "-o", "SOURCE", "-T", workdir_base)
    return {"workdir_fs": fs_type(workdir_base), "workdir_device": device,
            "workdir_rotational": _rotational(device), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": _proc_field("/proc/cpuinfo", "model name"), "memory_kib": _mem_total(),
            "virtualization": first_line("systemd-detect-virt")}


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first "name : value" line of a /proc file."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _mem_total() -> int | None:
    value = _proc_field("/proc/meminfo", "MemTotal")
    return int(value.split()[0]) if value else None


def _rotational(device: str | None) -> bool | None:
    """Whether the work dir's disk is rotational (sysfs queue/rotational), None if unknown."""
    if not device or not device.startswith("/dev/"):
        return None
    name = os.path.basename(os.path.realpath(device))
    for path in (f"/sys/class/block/{name}/queue/rotational", f"/sys/class/block/{name}/../queue/rotational"):
        try:
            with open(path) as f:
                return f.read().strip() == "1"
        except OSError:
            continue
    return None


def build_meta() -> dict:
    """What was measured: the commit of this checkout and whether tracked files differ from it."""
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {"git_commit": first_line("git", "-C", ROOT, "rev-parse", "HEAD"), "git_dirty": bool(dirty.stdout.strip())}


def publish(meta_path: str, meta: dict, show_report, results: str, failures: int, what: str) -> int:
    """The end of a measure: meta.json written, the report (show_report) printed and its JSON
    saved to results, then the exit status: 1 (with a line saying so) if failures, else 0."""
    write_json(meta_path, meta)
    print()
    show_report()
    print()
    print(f"JSON results: {results}", flush=True)
    if failures:
        log(f"{failures} run(s) {what} (see the messages above)")
        return 1
    return 0
