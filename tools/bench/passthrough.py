"""End-to-end benchmark of `blockmirror serve` (passthrough NBD export) against the raw file and
the peers, all on the same image file, with fio:
  raw          fio --ioengine=libaio --direct=1 on the image (the limit)
  blockmirror  blockmirror serve IMG --listen unix:SOCK          (fio --ioengine=nbd)
  qemu-nbd     qemu-nbd --cache=none --aio=native                (fio --ioengine=nbd)
  nbdkit       nbdkit file plugin cache=none (reads are page-cache backed: not an O_DIRECT peer)
Workloads: 4k randread QD32, 4k randwrite QD32 (IOPS); 1M sequential read/write QD32 (MiB/s).
Every (target, workload) runs REPEAT times, targets interleaved (a fresh server for each run,
target order rotated each round); the table shows medians and the ratio to raw.

Usage: tools/bench.py passthrough    (or tools/bench-passthrough.sh; as root on Debian 12:
       installs missing packages)
Environment:
  SIZE=2G           image size (random data; a multiple of 1 MiB; K/M/G suffixes, powers of 2)
  RUNTIME=8         seconds per fio run
  REPEAT=3          runs per (target, workload); the median is reported
  TARGETS="raw blockmirror qemu-nbd nbdkit"   subset/order of targets (raw is always added)
  BLOCKMIRROR_BIN=  use this binary instead of building (swift build -c release --scratch-path .build-release)
  WORKDIR_BASE=/var/tmp   where the work dir goes (must allow O_DIRECT: not /dev/shm or tmpfs)
  RESULTS=/var/tmp/blockmirror-bench-passthrough-DATE.json   where the JSON results go
  KEEP_WORK=1       keep the work dir (image, fio outputs, server logs) instead of deleting it
  READY_TIMEOUT=60  seconds for a server to accept connections
  STOP_TIMEOUT=30   seconds for a server to exit after SIGTERM
Exit code: 0 if every run succeeded (goal misses are reported, not signalled), 1 otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from . import blockmirror, fio, nbdkit, qemu
from .files import random_file
from .log import echo_err, log, log_tail, note_logged_warnings, tail
from .packages import ensure_commands, first_line
from .passthrough_report import WORKLOADS, report
from .procs import Daemon, NotReady, first_stdout_line, wait_serving
from .results import Samples, build_meta, machine_meta, now_iso, publish
from .run import Run, run_main
from .settings import env, positive_int, run_settings, RunSettings, size_bytes, target_list
from .workdir import WorkDir

SUMMARY = "blockmirror serve vs the raw file, qemu-nbd and nbdkit (fio through NBD)"
KNOWN_TARGETS = ["raw", "blockmirror", "qemu-nbd", "nbdkit"]
FIO_ARGS = {
    "randread4k": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "randwrite4k": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "seqread1m": ["--rw=read", "--bs=1M", "--iodepth=32"],
    "seqwrite1m": ["--rw=write", "--bs=1M", "--iodepth=32"],
}


@dataclass
class Settings(RunSettings):
    """The environment settings, checked (in the order the errors are reported)."""
    size: str
    size_bytes: int
    runtime: int
    repeat: int
    targets: list[str]

    @classmethod
    def from_env(cls, measure: str = "passthrough", runtime_default: str = "8") -> "Settings":
        """measure names the default RESULTS file (the QD sweep reads the same settings)."""
        runtime = positive_int("RUNTIME", env("RUNTIME", runtime_default), "a positive number of seconds")
        repeat = positive_int("REPEAT", env("REPEAT", "3"))
        size = env("SIZE", "2G")
        return cls(size=size, size_bytes=size_bytes(size), runtime=runtime, repeat=repeat,
                   targets=target_list(env("TARGETS", "raw blockmirror qemu-nbd nbdkit"), KNOWN_TARGETS),
                   **run_settings(measure, stop_timeout="30", qemu_paths=False))


def install_tools(s: Settings) -> None:
    """fio and nbdinfo always, each NBD peer's server if it is a target."""
    need = {"fio": "fio", "nbdinfo": "libnbd-bin"}
    if "qemu-nbd" in s.targets:
        need["qemu-nbd"] = "qemu-utils"
    if "nbdkit" in s.targets:
        need["nbdkit"] = "nbdkit"
    ensure_commands(need, ["nbdkit"] if "nbdkit" in s.targets and nbdkit.file_plugin_missing() else [])
    fio.require_engines("nbd")


class Bench:
    """One passthrough benchmark: the image, one fresh server per run, the samples (the QD sweep
    runs its fio jobs through run_on too)."""

    def __init__(self, s: Settings, work: WorkDir):
        self.s, self.work = s, work
        self.image = work.file("image.raw")
        self.sock = work.file("nbd.sock")
        self.samples = Samples(work.file("samples.tsv"))
        self.failures = 0

    def server(self, target: str) -> tuple[Daemon, Callable[[], str | None]]:
        """The target's server (not started) and how its URI is found once it listens."""
        log_path, stop = self.work.file(f"{target}.log"), self.s.stop_timeout
        if target == "blockmirror":
            uri_path = self.work.file("blockmirror.uri")
            return (blockmirror.serve(self.s.bin, self.image, self.sock, log_path, uri_path, stop),
                    lambda: first_stdout_line(uri_path))
        daemon = (qemu.qemu_nbd if target == "qemu-nbd" else nbdkit.nbdkit)(self.image, self.sock, log_path, stop)
        return daemon, lambda: f"nbd+unix:///?socket={self.sock}" if os.path.exists(self.sock) else None

    def start(self, target: str) -> tuple[Daemon, str]:
        """A fresh server for one run, serving the whole image; raises NotReady."""
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        daemon, uri_of = self.server(target)
        daemon.start()
        try:
            return daemon, wait_serving(daemon, uri_of, self.s.size_bytes, "the image", self.s.ready_timeout)
        except NotReady:
            daemon.stop()
            raise

    def stop(self, target: str, daemon: Daemon) -> None:
        """Stops a run's server; a bad exit status is a warning (a failure for blockmirror)."""
        rc = daemon.stop()
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        if rc != 0:
            log(f"warning: {target} exited with status {rc} after SIGTERM; tail of {daemon.log_path}:")
            log_tail(daemon.log_path)
            if target == "blockmirror":
                self.failures += 1

    def run_on(self, target: str, fio_args: list[str], name: str, parse: Callable[[str], object]):
        """One time-based fio run of fio_args (RUNTIME s) on target: a fresh server for it (raw: the
        image with libaio O_DIRECT), fio's JSON in NAME.fio.json, parse(path) of it. Returns what
        parse returned, None (logged, counted as a failure) if the server, fio or parse failed."""
        daemon, engine = None, fio.on_file(self.image)
        if target != "raw":
            try:
                daemon, uri = self.start(target)
            except NotReady:
                self.failures += 1
                return None
            engine = fio.on_export(uri)
        out = self.work.file(f"{name}.fio.json")
        args = ["--name=bench", "--numjobs=1", f"--runtime={self.s.runtime}", "--time_based", *fio_args, *engine]
        value = None
        if fio.run(args, out, fio.time_limit(self.s.runtime)):
            value = fio.or_note(out + ".err", parse, out)
        if value is None:
            log(f"fio failed: {name}; fio said:")
            echo_err(tail(out + ".err", 10))
            if daemon is not None:
                log(f"tail of {daemon.log_path}:")
                log_tail(daemon.log_path)
            self.failures += 1
        if daemon is not None:
            self.stop(target, daemon)
        return value

    def measure(self, target: str, workload: str, rnd: int) -> None:
        """One sample of (target, workload) in round rnd (None on failure), with its log line."""
        title, direction, metric = WORKLOADS[workload]
        value = self.run_on(target, FIO_ARGS[workload], f"{target}.{workload}.{rnd}",
                            lambda out: fio.value(out, direction, metric))
        self.samples.add((target, workload, str(rnd)), value)
        unit = "IOPS" if metric == "iops" else "MiB/s"
        shown = "FAILED" if value is None else value
        log(f"round {rnd}/{self.s.repeat}  {workload:<11} {target:<11} {shown} {unit}")

    def run_all(self) -> None:
        """REPEAT rounds of every workload on every target, the target order rotated each round."""
        s, n = self.s, len(self.s.targets)
        total = s.repeat * len(WORKLOADS) * n
        log(f"targets: {' '.join(s.targets)}; {len(WORKLOADS)} workloads x {s.repeat} rounds x {s.runtime}s: "
            f"{total} runs, about {total * (s.runtime + 1) // 60 + 1} min")
        for rnd in range(1, s.repeat + 1):
            for workload in WORKLOADS:
                for i in range(n):
                    self.measure(s.targets[(i + rnd - 1) % n], workload, rnd)

    def meta(self) -> dict:
        s = self.s
        return {"date": now_iso(), "size_bytes": s.size_bytes, "runtime_s": s.runtime, "repeat": s.repeat,
                "targets": s.targets, **machine_meta(s.workdir_base),
                "fio": first_line("fio", "--version"),
                "qemu_nbd": first_line("qemu-nbd", "--version") if "qemu-nbd" in s.targets else None,
                "nbdkit": first_line("nbdkit", "--version") if "nbdkit" in s.targets else None,
                "blockmirror_bin": s.bin or None, **build_meta(), "failed_runs": self.failures}


def prepare(run: Run, s: Settings, prefix: str = "blockmirror-bench") -> Bench:
    """What every run on the image needs: the tools, the work dir (prefix), the binary, the image
    of random data."""
    install_tools(s)
    run.work = work = WorkDir(s.workdir_base, prefix, s.results, s.keep_work)
    work.check(s.size_bytes, f"a {s.size} image")
    if "blockmirror" in s.targets:
        s.bin = blockmirror.binary(s.bin, "BLOCKMIRROR_BIN", ".build-release", work.file("build.log"))
    bench = Bench(s, work)
    log(f"creating a {s.size} ({s.size_bytes} bytes) image of random data in {work.path}")
    random_file(bench.image, s.size_bytes)
    return bench


def main(run: Run) -> int:
    s = Settings.from_env()
    bench = prepare(run, s)
    work = bench.work
    bench.run_all()
    if "blockmirror" in s.targets:
        note_logged_warnings(work.file("blockmirror.log"), "blockmirror")
    meta = bench.meta()
    return publish(work.file("meta.json"), meta, lambda: report(bench.samples, meta, s.results), s.results,
                   bench.failures, "failed or a server misbehaved")


def cli() -> int:
    return run_main("bench", main)
