"""Scaling: what the device size costs once the data is fixed. OLD holds the same DATA bytes of
random data at every size in SIZES: fully at the first size when it equals DATA (1 GiB), sparse
at the larger ones (the same amount in 1 MiB pieces spread evenly from start to end, holes in
between: 16 GiB, 1 TiB). NEW is a fresh sparse file (one hole) before every run, so what a
recovery allocates on it shows. Idle recoveries OLD -> NEW, through recovery.py's runs:
  blockmirror  blockmirror build NAME --source OLD --target missing (start-up: from the start
               to its export serving), then blockmirror add NAME NEW: time to in-sync
  qsd          qemu-storage-daemon with NEW opened discard=unmap (its zero writes punch holes;
               without it qemu zeroes NEW with fallocate ZERO_RANGE and allocates all of it),
               blockdev-mirror sync=full: time to ready
At in-sync (ready): the daemon's peak resident memory (VmHWM) and resident memory (VmRSS) from
/proc/PID/status, and NEW's allocation (st_blocks). After each run NEW is compared with OLD
where either holds data. Every (size, peer) runs REPEAT times, the peers' order rotated each
round; medians with min-max.

A run that could fill the disk is skipped, not run: a peer that allocated more than twice the
data on NEW at a smaller size is not run at a size larger than the free space (less 4 GiB).

Usage: tools/bench.py scaling    (or tools/bench-scaling.sh; as root on Debian 12: installs
       missing packages)
Environment:
  SIZES="1G 16G 1T"  device sizes (K/M/G/T suffixes, multiples of 1 MiB), smallest first
  DATA=1G            random data in OLD at every size (at most the smallest size)
  REPEAT=3           rounds per size; the median is reported
  TARGETS="blockmirror qsd"   subset/order of the peers
  BM_ARGS=           extra arguments for blockmirror build (e.g. "--region-size 4M")
  VERIFY=1           compare NEW with OLD after each run (0: skip)
  SYNC_TIMEOUT=1800  seconds a recovery may take
  BLOCKMIRROR_BIN=   use this binary instead of building
  SCRATCH=.build-release   SwiftPM scratch path of the release build (relative to the project)
  WORKDIR_BASE=/var/tmp    where OLD and NEW go (must allow O_DIRECT and sparse files)
  RESULTS=/var/tmp/blockmirror-bench-scaling-DATE.json   where the JSON results go
  KEEP_WORK=1        keep the work dir (logs; OLD and NEW are removed after each size)
  READY_TIMEOUT=60   seconds for a daemon to serve its export
  STOP_TIMEOUT=60    seconds for a daemon to exit once told to stop
Exit code: 0 if every run succeeded and every copy compared equal, 1 otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import MIB, blockmirror, recovery
from .files import allocated_bytes, sparse_file, sparse_new
from .log import BenchError, log, note_logged_warnings
from .packages import ensure_commands, first_line
from .procs import memory_kib
from .qemu import StorageDaemon
from .results import build_meta, machine_meta, now_iso, publish
from .run import Run, run_main
from .scaling_report import report, size_label
from .settings import env, positive_int, run_settings, RunSettings, size_bytes, target_list, unsigned_int
from .workdir import WorkDir

SUMMARY = "time to in-sync, memory and target allocation at 1 GiB, 16 GiB sparse and 1 TiB sparse"
KNOWN_TARGETS = ["blockmirror", "qsd"]
GUARD_MARGIN = 4 << 30  # bytes left free by a run that may allocate all of NEW


@dataclass
class Settings(RunSettings):
    """The environment settings, checked; the last fields are what recovery's runs read, fixed."""
    sizes: list[int]
    data_bytes: int
    repeat: int
    targets: list[str]
    bm_args: str
    verify: bool
    sync_timeout: int
    size_bytes: int = 0  # the size being measured
    bm_start: str = "add"
    qsd_copy_mode: str = "write-blocking"
    qsd_speed: int = 0

    @classmethod
    def from_env(cls) -> "Settings":
        sizes = [size_bytes(v) for v in env("SIZES", "1G 16G 1T").split()]
        if not sizes or sizes != sorted(set(sizes)):
            raise BenchError("SIZES must name distinct sizes, smallest first")
        data = size_bytes(env("DATA", "1G"))
        if data > sizes[0]:
            raise BenchError(f"DATA must be at most the smallest size ({size_label(sizes[0])})")
        return cls(sizes=sizes, data_bytes=data, repeat=positive_int("REPEAT", env("REPEAT", "3")),
                   targets=target_list(env("TARGETS", " ".join(KNOWN_TARGETS)), KNOWN_TARGETS, reference=None),
                   bm_args=env("BM_ARGS", ""), verify=unsigned_int("VERIFY", env("VERIFY", "1"), "0 or 1") != 0,
                   sync_timeout=positive_int("SYNC_TIMEOUT", env("SYNC_TIMEOUT", "1800")),
                   **run_settings("scaling"))


class Bench(recovery.Bench):
    """recovery's Bench at one size at a time: the size's label leads every metric and series,
    NEW is a sparse file, qsd opens it with discard=unmap; what each peer allocated so far."""

    def __init__(self, s: Settings, work: WorkDir):
        super().__init__(s, work)
        self.label = ""
        self.allocated_share: dict[str, float] = {}  # peer -> largest NEW allocation / data seen
        self.skipped: list[str] = []

    def sample(self, rnd: int, target: str, metric: str, value: float | None, done: bool = True) -> None:
        super().sample(rnd, target, f"{self.label}.{metric}", value, done)

    def record(self, target: str, kind: str, rnd: int, points: list) -> None:
        super().record(target, f"{self.label}.{kind}", rnd, points)

    def tag(self, target: str, rnd: int) -> str:
        return f"{target}.{self.label}.r{rnd}"

    def reset_new(self) -> None:
        sparse_new(self.new, self.s.size_bytes)

    def storage_daemon(self, local_target: bool) -> StorageDaemon:
        return StorageDaemon(self.old, self.new if local_target else None, self.work.file("qsd-nbd.sock"),
                             self.work.file("qsd-qmp.sock"), self.work.file("qsd.log"), self.s.stop_timeout,
                             target_discard=True)

    def footprint(self, target: str, rnd: int, pid: int) -> None:
        """The daemon's memory and NEW's allocation, sampled at in-sync (ready)."""
        mem = memory_kib(pid)
        alloc = allocated_bytes(self.new)
        self.sample(rnd, target, "rss_peak_kib", mem.get("VmHWM"))
        self.sample(rnd, target, "rss_kib", mem.get("VmRSS"))
        self.sample(rnd, target, "target_alloc_bytes", alloc)
        share = alloc / self.s.data_bytes
        self.allocated_share[target] = max(self.allocated_share.get(target, 0.0), share)
        log(f"  {target}: peak RSS {mem.get('VmHWM', '?')} KiB, RSS {mem.get('VmRSS', '?')} KiB, "
            f"NEW allocated {alloc // MIB} MiB")

    def may_fill_disk(self, target: str) -> bool:
        """The peer allocated more than twice the data at a smaller size and this size is more
        than the free space (less GUARD_MARGIN): it is skipped (said in the log and the JSON)."""
        st = os.statvfs(self.work.path)
        free = st.f_bavail * st.f_frsize
        if self.allocated_share.get(target, 0.0) > 2 and self.s.size_bytes > free - GUARD_MARGIN:
            why = (f"{target} at {self.label}: skipped, it allocated {self.allocated_share[target]:.1f}x the data on "
                   f"NEW at a smaller size and {self.label} is more than the free space ({free // MIB} MiB) less 4 GiB")
            log(why)
            if why not in self.skipped:
                self.skipped.append(why)
            return True
        return False


def bm_run(b: Bench, rnd: int) -> None:
    def in_sync(m: recovery.MirrorRun) -> None:
        b.sample(rnd, "blockmirror", "startup_s", m.startup_s)
        b.footprint("blockmirror", rnd, m.mirror.daemon.pid)

    b.reset_new()
    recovery.bm_recovery(b, rnd, f"recovery at {b.label}", "sync_s", in_sync=in_sync)


def qsd_run(b: Bench, rnd: int) -> None:
    b.reset_new()
    recovery.qsd_recovery(b, rnd, f"recovery at {b.label}", "sync_s",
                          in_ready=lambda qsd: b.footprint("qsd", rnd, qsd.daemon.pid))


ROUNDS = {"blockmirror": bm_run, "qsd": qsd_run}


def install_tools(s: Settings) -> None:
    need = {"nbdinfo": "libnbd-bin"}
    if "qsd" in s.targets:
        need["qemu-storage-daemon"] = "qemu-system-common"
    ensure_commands(need)


def notes(s: Settings) -> list[str]:
    return [f"OLD holds {size_label(s.data_bytes)} of random data at every size (sparse above it: 1 MiB pieces spread "
            "evenly, holes between); NEW is one hole before every run.",
            "blockmirror: time from 'blockmirror add NAME NEW' to the status poll that first saw in-sync; start-up "
            "is from the start of 'build --target missing' to its export serving.",
            "qsd: NEW opened with discard=unmap (without it qemu allocates all of NEW with fallocate ZERO_RANGE); "
            "time from blockdev-mirror to BLOCK_JOB_READY.",
            "Memory: VmHWM (peak) and VmRSS of the daemon at in-sync (ready), from /proc/PID/status; allocation: "
            "NEW's st_blocks x 512 at the same moment."]


def main(run: Run) -> int:
    s = Settings.from_env()
    install_tools(s)
    run.work = work = WorkDir(s.workdir_base, "blockmirror-bench-scaling", s.results, s.keep_work)
    work.check(2 * s.data_bytes, f"two files holding {size_label(s.data_bytes)} of data each")
    if "blockmirror" in s.targets:
        s.bin = blockmirror.binary(s.bin, "BLOCKMIRROR_BIN", s.scratch, work.file("build.log"))
        recovery.check_blockmirror(s)
    b = Bench(s, work)
    os.makedirs(b.run_dir, exist_ok=True)
    n = len(s.targets)
    log(f"sizes: {' '.join(map(size_label, s.sizes))} holding {size_label(s.data_bytes)} of data each; peers: "
        f"{' '.join(s.targets)}; {s.repeat} rounds")
    for size in s.sizes:
        s.size_bytes, b.label = size, size_label(size)
        log(f"creating OLD: {b.label} holding {size_label(s.data_bytes)} of random data")
        try:
            sparse_file(b.old, size, s.data_bytes)
        except OSError as e:
            raise BenchError(f"cannot make a {b.label} sparse file in {s.workdir_base}: {e.strerror} "
                             "(its file system may not allow files that large: set SIZES)")
        for rnd in range(1, s.repeat + 1):
            for i in range(n):
                target = s.targets[(i + rnd - 1) % n]
                if b.may_fill_disk(target):
                    continue
                log(f"{b.label}, round {rnd}/{s.repeat}: {target}")
                ROUNDS[target](b, rnd)
        for path in (b.old, b.new):
            if os.path.exists(path):
                os.unlink(path)
    if "blockmirror" in s.targets:
        note_logged_warnings(work.file("blockmirror.log"), "blockmirror")
    m = {"date": now_iso(), "sizes": s.sizes, "size_labels": [size_label(x) for x in s.sizes],
         "data_bytes": s.data_bytes, "repeat": s.repeat, "targets": s.targets, "blockmirror_args": s.bm_args,
         "verify": s.verify, **machine_meta(s.workdir_base),
         "qemu_storage_daemon": first_line("qemu-storage-daemon", "--version") if "qsd" in s.targets else None,
         "blockmirror_bin": s.bin or None, **build_meta(), "failed_runs": b.failures, "skipped": b.skipped,
         "notes": notes(s)}
    return publish(work.file("meta.json"), m, lambda: report(b.samples, m, s.results, b.series), s.results,
                   b.failures, "failed or a copy did not compare equal")


def cli() -> int:
    return run_main("bench-scaling", main)
