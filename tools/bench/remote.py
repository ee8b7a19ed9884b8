"""Recovery onto a remote target: `blockmirror build` + `add nbd://…` against qemu-storage-daemon's
blockdev-mirror onto the same NBD target and against nbdcopy of the same data, across a veth
link to a second host (a network namespace the harness creates, and removes afterwards):
  OLD  a local file of SIZE random data
  NEW  a fresh fallocated file of SIZE before every run, served on the second host by
       `ip netns exec NS nbdkit -f -i ADDR -p 10809 file NEW` (ADDR: 10.214.N.2, N from the pid)
Peers, REPEAT rounds, their order rotated each round, in two variants: plain, and delay (nbdkit's
delay filter adds DELAY_MS to every read, write, zero and trim: this kernel has no netem):
  blockmirror  blockmirror build NAME --source OLD --target missing, then (its export up)
               blockmirror add NAME nbd://ADDR:10809/: time from the add to
               `blockmirror status --json` reporting "in-sync"
  qsd          qemu-storage-daemon, OLD as a file blockdev (O_DIRECT, aio=native), the target
               added with blockdev-add driver=nbd (TCP to ADDR:10809), blockdev-mirror
               sync=full: time from the command to BLOCK_JOB_READY, then block-job-cancel
  nbdcopy      nbdcopy OLD nbd://ADDR:10809/: the whole command (it only copies: it serves
               nobody meanwhile)
After each blockmirror and qsd run NEW (a local file, served from the namespace) is compared
with OLD. In the plain variant the in-sync blockmirror mirror also takes 4k randwrite QD32 (fio
nbd engine on its export, RUNTIME s), against the same on a mirror whose target is a local file
(a third variant, "local": blockmirror only, its recovery time is a reference). The tables show
medians, min-max, rates, the ratios blockmirror / peer and the issue's goals: recovery time
<= 0.9x qsd's and <= 1.1x nbdcopy's.

Usage: tools/bench.py remote    (or tools/bench-remote.sh; as root: it creates a network
       namespace and a veth pair; on Debian 12 it installs missing packages)
Environment:
  SIZE=1G            size of OLD and NEW (a multiple of 1 MiB; K/M/G suffixes), e.g. SIZE=256M
  REPEAT=3           rounds; the median is reported
  RUNTIME=5          seconds per 4k randwrite run
  DELAY_MS=1         milliseconds the delay variant adds per request (0: no delay variant)
  TARGETS="blockmirror qsd nbdcopy"   subset/order of the peers (without blockmirror: no 4k
                     randwrite and no local variant)
  BM_ARGS=           extra arguments for blockmirror build (e.g. "--nbd-timeout 60")
  VERIFY=1           compare NEW with OLD after each blockmirror and qsd run (0: skip)
  SYNC_TIMEOUT=600   seconds any recovery or copy may take
  BLOCKMIRROR_BIN=   use this binary instead of building
  SCRATCH=.build-release   SwiftPM scratch path of the release build (relative to the project)
  WORKDIR_BASE=/var/tmp    where OLD and NEW go (must allow O_DIRECT: not /dev/shm or tmpfs)
  RESULTS=/var/tmp/blockmirror-bench-remote-DATE.json   where the JSON results go
  KEEP_WORK=1        keep the work dir (files, fio outputs, logs) instead of deleting it
  READY_TIMEOUT=60   seconds for a server to accept NBD connections
  STOP_TIMEOUT=60    seconds for a daemon to exit once told to stop
Exit code: 0 if every run succeeded and every copy compared equal (goal misses are reported,
not signalled), 1 otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import blockmirror, fio, nbdkit, recovery
from .files import drop_cache, random_file
from .log import BenchError, log, log_tail, note_logged_warnings
from .netns import SecondHost
from .packages import ensure_commands, first_line
from .procs import Daemon, NotReady, wait_serving
from .remote_report import report
from .results import build_meta, machine_meta, now_iso, publish
from .run import Run, run_main
from .settings import env, positive_int, run_settings, RunSettings, size_bytes, target_list, unsigned_int
from .workdir import WorkDir

SUMMARY = "recovery onto a remote NBD target (a second host over veth) vs qsd's mirror and nbdcopy"
KNOWN_TARGETS = ["blockmirror", "qsd", "nbdcopy"]
PORT = 10809
RANDWRITE_VARIANTS = ("plain", "local")  # the variants whose in-sync blockmirror takes 4k randwrite


@dataclass
class Settings(RunSettings):
    """The environment settings, checked (in the order the errors are reported); the last fields
    are what recovery's mirror and qsd runs read, fixed here."""
    size: str
    size_bytes: int
    repeat: int
    runtime: int
    delay_ms: int
    sync_timeout: int
    targets: list[str]
    bm_args: str
    verify: bool
    bm_start: str = "add"
    qsd_copy_mode: str = "write-blocking"
    qsd_speed: int = 0

    @classmethod
    def from_env(cls) -> "Settings":
        repeat = positive_int("REPEAT", env("REPEAT", "3"))
        runtime = positive_int("RUNTIME", env("RUNTIME", "5"), "a positive number of seconds")
        delay_ms = unsigned_int("DELAY_MS", env("DELAY_MS", "1"), "a whole number of milliseconds (0: no delay variant)")
        sync_timeout = positive_int("SYNC_TIMEOUT", env("SYNC_TIMEOUT", "600"))
        size = env("SIZE", "1G")
        nbytes = size_bytes(size)
        return cls(size=size, size_bytes=nbytes, repeat=repeat, runtime=runtime, delay_ms=delay_ms,
                   sync_timeout=sync_timeout,
                   targets=target_list(env("TARGETS", " ".join(KNOWN_TARGETS)), KNOWN_TARGETS, reference=None),
                   bm_args=env("BM_ARGS", ""), verify=unsigned_int("VERIFY", env("VERIFY", "1"), "0 or 1") != 0,
                   **run_settings("remote"))

    def variants(self) -> list[str]:
        """plain; local (a local target: blockmirror's reference) if blockmirror is measured;
        delay unless DELAY_MS=0."""
        return ["plain", *(["local"] if "blockmirror" in self.targets else []), *(["delay"] if self.delay_ms else [])]

    def peers(self, variant: str) -> list[str]:
        return ["blockmirror"] if variant == "local" else self.targets


def install_tools(s: Settings) -> None:
    """ip, nbdkit (file plugin, delay filter), nbdinfo, fallocate and fio always; the peers'."""
    need = {"ip": "iproute2", "nbdkit": "nbdkit", "nbdinfo": "libnbd-bin", "fallocate": "util-linux", "fio": "fio"}
    if "qsd" in s.targets:
        need["qemu-storage-daemon"] = "qemu-system-common"
    if "nbdcopy" in s.targets:
        need["nbdcopy"] = "libnbd-bin"
    ensure_commands(need, ["nbdkit"] if nbdkit.file_plugin_missing() else [])
    if s.delay_ms and not nbdkit.has_filter("delay"):
        raise BenchError("this nbdkit has no delay filter (Debian's nbdkit package has it; or DELAY_MS=0)")
    if "blockmirror" in s.targets:
        fio.require_engines("nbd")


class Bench(recovery.Bench):
    """recovery's Bench with NEW on the second host: the variant being measured (its name leads
    every metric and every file of a run) and NEW's nbdkit there."""

    def __init__(self, s: Settings, work: WorkDir, host: SecondHost):
        super().__init__(s, work)
        self.host = host
        self.variant = "plain"
        self.server: Daemon | None = None

    @property
    def uri(self) -> str:
        return f"nbd://{self.host.address}:{PORT}/"

    def sample(self, rnd: int, target: str, metric: str, value: float | None, done: bool = True) -> None:
        super().sample(rnd, target, f"{self.variant}.{metric}", value, done)

    def tag(self, target: str, rnd: int) -> str:
        return f"{target}.{self.variant}.r{rnd}"

    def prepare(self, target: str, rnd: int) -> bool:
        """A fresh NEW, OLD out of the page cache, and (but in the local variant) NEW served by
        nbdkit on the second host; False (failure counted and sampled) if nbdkit does not serve."""
        self.reset_new()
        drop_cache(self.old)
        if self.variant == "local":
            return True
        self.server = nbdkit.remote_tcp(self.host.run_in(), self.new, self.host.address, PORT,
                                        self.s.delay_ms if self.variant == "delay" else 0,
                                        self.work.file("nbdkit.log"), self.s.stop_timeout, self.variant).start()
        try:
            wait_serving(self.server, lambda: self.uri, self.s.size_bytes, "NEW", self.s.ready_timeout)
            return True
        except NotReady:
            self.stop_server()
            self.fail(f"nbdkit on the second host did not serve NEW ({target}, {self.variant}, round {rnd})")
            self.sample(rnd, target, "recovery_s", None)
            return False

    def stop_server(self) -> None:
        """Stops NEW's nbdkit (if running); a bad exit status is a warning."""
        if self.server is None:
            return
        server, self.server = self.server, None
        rc = server.stop()
        if rc != 0:
            log(f"warning: nbdkit on the second host exited with status {rc}; tail of {server.log_path}:")
            log_tail(server.log_path)

    def where(self) -> str:
        """What the runs of the variant copy onto, for the log lines."""
        return {"plain": "recovery onto the second host",
                "delay": f"recovery onto the second host (+{self.s.delay_ms} ms a request)",
                "local": "recovery onto a local file"}[self.variant]


# ---------------------------------------------------------------- the peers

def bm_round(b: Bench, rnd: int) -> None:
    """blockmirror build --target missing, then add of the URI (local variant: of NEW), until
    in-sync; 4k randwrite on the in-sync mirror in the plain and local variants."""
    if not b.prepare("blockmirror", rnd):
        return
    in_sync = (lambda m: b.run_4k("blockmirror", rnd, m.uri)) if b.variant in RANDWRITE_VARIANTS else None
    recovery.bm_recovery(b, rnd, b.where(), "recovery_s", target=None if b.variant == "local" else b.uri,
                         in_sync=in_sync)
    b.stop_server()


def qsd_round(b: Bench, rnd: int) -> None:
    """qemu-storage-daemon's blockdev-mirror onto blockdev-add driver=nbd, until ready."""
    if not b.prepare("qsd", rnd):
        return
    recovery.qsd_recovery(b, rnd, b.where(), "recovery_s", remote=(b.host.address, PORT))
    b.stop_server()


def nbdcopy_round(b: Bench, rnd: int) -> None:
    """nbdcopy OLD URI, the whole command timed."""
    if not b.prepare("nbdcopy", rnd):
        return
    secs = b.timed(["nbdcopy", b.old, b.uri], b.work.file(f"{b.tag('nbdcopy', rnd)}.err"))
    if secs is None:
        b.fail(f"nbdcopy {b.where()}, round {rnd}")
    else:
        log(f"  nbdcopy {b.where()}: {secs} s")
    b.sample(rnd, "nbdcopy", "recovery_s", secs)
    b.stop_server()


ROUNDS = {"blockmirror": bm_round, "qsd": qsd_round, "nbdcopy": nbdcopy_round}


# ---------------------------------------------------------------- run and report

def notes(s: Settings) -> list[str]:
    """What the tables' figures mean for this run's settings."""
    out = ["NEW is a fresh fallocated (unwritten) file before every run, served by a fresh nbdkit (file plugin, "
           "its defaults: page cache) on the second host across the veth link; OLD is dropped from the page cache "
           "before every run and keeps the writes of earlier 4k runs."]
    if "blockmirror" in s.targets:
        out.append("blockmirror: started degraded (build --target missing); time from 'blockmirror add NAME URI' to "
                   "the status poll that first saw in-sync (± half the poll interval: *_poll_resolution_s in the JSON).")
    if "qsd" in s.targets:
        out.append("qsd: the NBD target added with blockdev-add before the clock starts; time from blockdev-mirror "
                   f"(sync=full, copy-mode={s.qsd_copy_mode}) to BLOCK_JOB_READY.")
    if "nbdcopy" in s.targets:
        out.append("nbdcopy: the whole command (connecting included), its defaults (no --flush).")
    if s.delay_ms:
        out.append(f"delay: nbdkit's delay filter adds {s.delay_ms} ms to every "
                   f"{', '.join(nbdkit.DELAYED)} request (in the server: requests in flight overlap).")
    out.append("2-core machine: figures are noisy; compare ratios from the same run.")
    return out


def meta(s: Settings, host: SecondHost, failures: int) -> dict:
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {"date": now_iso(), "size_bytes": s.size_bytes, "repeat": s.repeat, "runtime_s": s.runtime,
            "delay_ms": s.delay_ms, "delayed_requests": list(nbdkit.DELAYED), "variants": s.variants(),
            "targets": s.targets, "local_address": host.local_address, "remote_address": host.address, "port": PORT,
            "qsd_copy_mode": s.qsd_copy_mode, "blockmirror_args": s.bm_args, "verify": s.verify,
            **machine_meta(s.workdir_base), "loadavg_at_end": loadavg,
            "nbdkit": first_line("nbdkit", "--version"), "fio": first_line("fio", "--version"),
            "qemu_storage_daemon": first_line("qemu-storage-daemon", "--version") if "qsd" in s.targets else None,
            "nbdcopy": first_line("nbdcopy", "--version") if "nbdcopy" in s.targets else None,
            "blockmirror_bin": s.bin or None, **build_meta(), "failed_runs": failures, "notes": notes(s)}


def main(run: Run) -> int:
    s = Settings.from_env()
    if os.geteuid() != 0:
        raise BenchError("tools/bench.py remote needs root: it creates a network namespace and a veth pair "
                         "(ip netns add, ip link add); run it as root (sudo)")
    install_tools(s)
    run.work = work = WorkDir(s.workdir_base, "blockmirror-bench-remote", s.results, s.keep_work)
    work.check(2 * s.size_bytes, f"two {s.size} files")
    if "blockmirror" in s.targets:
        s.bin = blockmirror.binary(s.bin, "BLOCKMIRROR_BIN", s.scratch, work.file("build.log"))
        recovery.check_blockmirror(s)
    host = SecondHost()
    run.cleanups.append(host.remove)
    host.create()
    b = Bench(s, work, host)
    log(f"creating OLD: {s.size} ({s.size_bytes} bytes) of random data in {work.path}")
    random_file(b.old, s.size_bytes)
    os.makedirs(b.run_dir, exist_ok=True)
    variants = s.variants()
    runs = sum(len(s.peers(v)) for v in variants)
    minutes = s.repeat * (runs * (20 * s.size_bytes // 1073741824 + 5) + 2 * s.runtime) // 60 + 1
    log(f"peers: {' '.join(s.targets)}; variants: {' '.join(variants)}; {s.repeat} rounds; {s.size} files; "
        f"4k runs of {s.runtime}s; about {minutes} min")
    for rnd in range(1, s.repeat + 1):
        for variant in variants:
            b.variant = variant
            peers = s.peers(variant)
            for i in range(len(peers)):
                target = peers[(i + rnd - 1) % len(peers)]
                log(f"round {rnd}/{s.repeat}, {variant}: {target}")
                ROUNDS[target](b, rnd)
    if "blockmirror" in s.targets:
        note_logged_warnings(work.file("blockmirror.log"), "blockmirror")
    m = meta(s, host, b.failures)
    return publish(work.file("meta.json"), m, lambda: report(b.samples, m, s.results), s.results,
                   b.failures, "failed or a copy did not compare equal")


def cli() -> int:
    return run_main("bench-remote", main)
