"""How much a crash costs: regions a restart must copy again after kill -9 of an in-sync mirror.

An in-sync mirror (SIZE of random data, REGION regions, write-intent bitmap) takes fio 4k random
writes QD32 for 3 s through NBD; the daemon is killed with SIGKILL (a) while the writes run and
(b) IDLE seconds after they stopped. The restart logs how many regions the bitmap marks. Both
kills are repeated REPEAT times on the same mirror (each restart resumes it in sync); the
table shows medians and min-max, the JSON every count.

Usage: tools/bench.py crash-cost    (or tools/bench-crash-cost.sh)
Environment:
  SIZE=512M         size of OLD and NEW (a multiple of 1 MiB; K/M/G suffixes)
  REGION=1M         the bitmap's region size (blockmirror build --region-size)
  IDLE=5            seconds between the end of the writes and the second kill -9
  REPEAT=3          rounds of both kills; the median is reported
  RESULTS=/var/tmp/blockmirror-bench-crash-cost-DATE.json   where the JSON results go
  BLOCKMIRROR=      (or BLOCKMIRROR_BIN=) use this binary instead of building
                    (swift build -c release --scratch-path .build)
  WORKDIR_BASE=/var/tmp   where the work dir goes
  KEEP=1            (or KEEP_WORK=1) keep the work dir instead of deleting it
  READY_TIMEOUT=60  seconds for the daemon to serve its export after a (re)start
  SYNC_TIMEOUT=600  seconds for the mirror to be in sync after a (re)start
  STOP_TIMEOUT=60   seconds for the daemon to exit after SIGTERM
Exit code: 0 if the measure ran (whether OLD and NEW compare equal is printed and in the JSON),
1 otherwise.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time

from . import blockmirror, fio
from .log import BenchError, log, newest_section
from .packages import ensure_commands, first_line
from .procs import NotReady, first_stdout_line, wait_serving
from .results import build_meta, machine_meta, median_min_max, now_iso, write_json
from .run import Run, run_main
from .settings import env, positive_int, results_path, seconds, size_bytes
from .workdir import WorkDir

SUMMARY = "regions a restart copies again after kill -9 of an in-sync mirror"
NAME = "m0"


class CrashCost:
    """OLD and NEW (a copy of it), and the mirror between them that gets killed and restarted."""

    def __init__(self, work: WorkDir, bin_path: str, size: int, region: str, ready_timeout: int,
                 sync_timeout: int, stop_timeout: int):
        self.work, self.size, self.region = work, size, region
        self.old, self.new = work.file("old.img"), work.file("new.img")
        self.sock = work.file("nbd.sock")
        self.ready_timeout, self.sync_timeout = ready_timeout, sync_timeout
        self.mirror = blockmirror.Mirror(bin_path, NAME, work.file("run"), work.file("log"), work.file("out"),
                                         stop_timeout)

    def fill(self) -> None:
        """OLD: random data written by fio; NEW: a copy of it (so the mirror starts in sync)."""
        if subprocess.run(["fio", "--name=fill", "--rw=write", "--bs=1M", f"--size={self.size}",
                           f"--filename={self.old}", "--refill_buffers"], stdout=subprocess.DEVNULL).returncode != 0:
            raise BenchError(f"fio could not write {self.old}")
        shutil.copyfile(self.old, self.new)

    def start(self) -> None:
        """Starts the mirror; waits for its export and for in-sync."""
        daemon = self.mirror.start(["--source", self.old, "--target", self.new, "--bitmap", self.work.file("bitmap"),
                                    "--region-size", self.region, "--listen", f"unix:{self.sock}"], note="")
        try:
            wait_serving(daemon, lambda: first_stdout_line(self.mirror.out_path), self.size, "OLD",
                         self.ready_timeout)
            res = self.mirror.wait_in_sync(time.time(), self.size, self.sync_timeout)
        except (NotReady, blockmirror.MirrorError) as e:
            raise BenchError(f"the mirror did not come up in sync: {e}")
        if not res["done"]:
            raise BenchError(f"the mirror was not in sync {self.sync_timeout}s after its start")

    def restart_and_count(self) -> tuple[int, int]:
        """Restarts the killed mirror: the regions the restart found dirty, and all regions."""
        self.start()
        dirty = next((m.group(1) for line in newest_section(self.mirror.log_path)
                      if (m := re.search(r"dirty=([0-9]*)", line))), "")
        try:
            total = self.mirror.status()["regionsTotal"]
        except (blockmirror.MirrorError, KeyError) as e:
            raise BenchError(f"no regionsTotal in the restarted mirror's status: {e}")
        return int(dirty or 0), int(total)

    def writes(self) -> subprocess.Popen:
        """fio 4k randwrite QD32 for 3 s through the export (its outcome does not matter)."""
        return subprocess.Popen(["fio", "--name=w", *fio.on_export(f"nbd+unix:///{NAME}?socket={self.sock}"),
                                 "--rw=randwrite", "--bs=4k", "--iodepth=32", f"--size={self.size}", "--time_based",
                                 "--runtime=3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def crash(self) -> None:
        self.mirror.daemon.kill()

    def identical(self) -> bool:
        """cmp OLD NEW (cmp says where they differ)."""
        return subprocess.run(["cmp", self.old, self.new]).returncode == 0


def summary(counts: list[int]) -> dict:
    median, lo, hi = median_min_max(counts)
    return {"samples": counts, "median": median, "min": lo, "max": hi}


def show(s: dict, total: int) -> str:
    """"median (min–max) of TOTAL (share)" for the table."""
    cell = f"{s['median']:g}"
    if len(s["samples"]) > 1:
        cell += f" ({s['min']}–{s['max']})"
    return f"{cell} of {total} ({100 * s['median'] / total:.1f}%)"


def main(run: Run) -> int:
    size = env("SIZE", "512M")
    nbytes = size_bytes(size)
    region = env("REGION", "1M")
    idle = seconds("IDLE", env("IDLE", "5"))
    repeat = positive_int("REPEAT", env("REPEAT", "3"))
    results = results_path("crash-cost")
    ready = positive_int("READY_TIMEOUT", env("READY_TIMEOUT", "60"))
    sync = positive_int("SYNC_TIMEOUT", env("SYNC_TIMEOUT", "600"))
    stop = positive_int("STOP_TIMEOUT", env("STOP_TIMEOUT", "60"))
    ensure_commands({"fio": "fio", "nbdinfo": "libnbd-bin"})
    fio.require_engines("nbd")
    workdir_base = env("WORKDIR_BASE", "/var/tmp")
    keep = env("KEEP", "") != "" or env("KEEP_WORK", "0") == "1"
    run.work = work = WorkDir(workdir_base, "bm-crash", results, keep)
    work.check(2 * nbytes, f"two {size} files")
    setting = "BLOCKMIRROR" if env("BLOCKMIRROR", "") else "BLOCKMIRROR_BIN"
    bin_path = blockmirror.binary(env(setting, ""), setting, ".build", work.file("build.log"))
    c = CrashCost(work, bin_path, nbytes, region, ready, sync, stop)
    c.fill()

    c.start()
    during, after_idle, total = [], [], 0
    for rnd in range(1, repeat + 1):
        load = c.writes()
        time.sleep(2.5)
        c.crash()
        load.wait()
        dirty, total = c.restart_and_count()
        during.append(dirty)
        c.writes().wait()
        time.sleep(idle)
        c.crash()
        dirty, total = c.restart_and_count()
        after_idle.append(dirty)
        log(f"round {rnd}/{repeat}: kill -9 during the writes: {during[-1]} of {total} regions to copy again; "
            f"{idle} s after: {after_idle[-1]}")
    c.mirror.stop()
    same = c.identical()
    rows = {"during": summary(during), "after_idle": summary(after_idle)}
    print(f"Crash cost: regions a restart copies again after kill -9 of an in-sync mirror ({size} in {region} "
          f"regions, write-intent bitmap; fio 4k randwrite QD32 for 3 s through NBD); medians of {repeat} (min–max)")
    print()
    print("| kill -9 | regions to copy again |")
    print("|---|---|")
    print(f"| during the writes (2.5 s into them) | {show(rows['during'], total)} |")
    print(f"| {idle} s after the writes stopped | {show(rows['after_idle'], total)} |")
    print()
    print(f"After the resumes, OLD and NEW are {'identical' if same else 'DIFFERENT'}.")
    meta = {"date": now_iso(), "size_bytes": nbytes, "region": region, "idle_s": idle, "repeat": repeat,
            **machine_meta(workdir_base), "fio": first_line("fio", "--version"), "blockmirror_bin": bin_path,
            **build_meta()}
    write_json(results, {"meta": meta, "regions_total": total, "results": rows, "identical": same})
    print()
    print(f"JSON results: {results}", flush=True)
    return 0


def cli() -> int:
    return run_main("bench-crash-cost", main)
