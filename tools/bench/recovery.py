"""Recovery benchmark of `blockmirror build` against the raw copy limit and qemu-storage-daemon's
blockdev-mirror, all on the same two files (OLD: random data; NEW: a fresh fallocated file of
the same size before every recovery), with fio:
  1. idle recovery OLD -> NEW:
       raw fio      fio reading OLD and writing NEW at the same time, 1M QD16 each, libaio O_DIRECT
                    (what the disk does for a pipelined copy; not a copy: NEW gets fio's data)
       raw dd       dd iflag=direct oflag=direct bs=$DD_BS (a real copy, one request at a time)
                    (ratios "vs raw" are against the faster of the two, by median)
       qsd          blockdev-mirror sync=full (O_DIRECT, aio=native both sides): time from the
                    command to BLOCK_JOB_READY
       blockmirror  blockmirror build NAME --source OLD --target missing, then (its export up)
                    blockmirror add NAME NEW: time from the add to `blockmirror status --json`
                    reporting "in-sync" (BM_START=build: --target NEW, timed from the start)
  2. the same under fio --ioengine=nbd 64k randwrite QD8 through each one's NBD export, from
     before the recovery until it is done (at most LOAD_TIMEOUT s): recovery time and the
     foreground MiB/s of fio within the recovery (and in the FIO_WARMUP s before it);
  3. 4k randwrite QD32 (fio nbd engine, RUNTIME s) on the mirror once in sync: blockmirror
     in-sync against qsd's job in ready state (not completed: writes keep being mirrored), and
     two raw references with libaio O_DIRECT: OLD alone, and OLD and NEW written at once (two
     jobs, QD32 each: the slower job's IOPS is what a leg gets when both legs share the disk,
     as a mirror's do here: the limit of a mirror on one disk).
After each mirror run the daemon is stopped (qsd: block-job-cancel of the ready job, which
leaves NEW a consistent copy) and NEW is compared with OLD (O_DIRECT reads). Every measure runs
REPEAT times, the targets' order rotated each round; the tables show medians, min-max and ratios.

Usage: tools/bench.py recovery    (or tools/bench-recovery.sh; as root on Debian 12: installs
       missing packages)
Environment:
  SIZE=2G            size of OLD and NEW (a multiple of 1 MiB; K/M/G suffixes), e.g. SIZE=512M
  REPEAT=3           rounds; the median is reported
  RUNTIME=10         seconds per 4k randwrite run
  LOAD_TIMEOUT=60    seconds a recovery under load may take before the load stops (then the
                     recovery is reported as "not done", with its progress, and finishes idle)
  SYNC_TIMEOUT=600   seconds any recovery may take at all
  TARGETS="raw qsd blockmirror"   subset/order (raw is always run: it is the reference)
  QSD_COPY_MODE=write-blocking    qsd's copy-mode (write-blocking: writes reach both sides
                     before they complete, as with blockmirror; or background)
  QSD_SPEED=0        qsd's speed limit in bytes/s (0: none)
  BM_ARGS=           extra arguments for blockmirror build (e.g. "--speed-min 100000")
  BM_START=add       how blockmirror's recovery starts: add (default when the binary has the
                     verb): `build --target missing`, then `blockmirror add NAME NEW` once its
                     export is up (and the load running), like qsd's blockdev-mirror on a
                     running daemon; build: `build --target NEW`, timed from the process start
  DD_BS=1M           block size of the dd copy
  VERIFY=1           compare NEW with OLD after each mirror run (0: skip)
  FIO_WARMUP=1       seconds the load runs through the export before the recovery starts
  BLOCKMIRROR_BIN=   use this binary instead of building
  SCRATCH=.build-release   SwiftPM scratch path of the release build (relative to the project)
  WORKDIR_BASE=/var/tmp    where OLD and NEW go (must allow O_DIRECT: not /dev/shm or tmpfs)
  RESULTS=/var/tmp/blockmirror-bench-recovery-DATE.json   where the JSON results go
  KEEP_WORK=1        keep the work dir (files, fio outputs, logs) instead of deleting it
  READY_TIMEOUT=60   seconds for a daemon to accept NBD connections
  STOP_TIMEOUT=60    seconds for a daemon to exit once told to stop
Exit code: 0 if every run succeeded and every copy compared equal, 1 otherwise.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from . import blockmirror, fio
from .files import drop_cache, fresh_file, random_file, same_content
from .log import BenchError, echo_err, log, log_tail, note_logged_warnings, tail
from .packages import ensure_commands, first_line
from .procs import NotReady, first_stdout_line, run_limited, wait_serving
from .qemu import QMPError, StorageDaemon
from .recovery_report import report
from .results import Samples, build_meta, machine_meta, now_iso, publish, write_json
from .run import Run, run_main
from .settings import env, one_of, positive_int, run_settings, RunSettings, seconds, size_bytes, target_list, unsigned_int
from .workdir import WorkDir

SUMMARY = "blockmirror build's recovery vs a raw copy and qemu-storage-daemon's blockdev-mirror"
KNOWN_TARGETS = ["raw", "qsd", "blockmirror"]
NAME = "benchrec"  # blockmirror's mirror name (and NBD export name)
LOAD_TAIL = 0.3  # seconds the load runs on after a recovery (fio logs its bandwidth every 0.1 s)


@dataclass
class Settings(RunSettings):
    """The environment settings, checked (in the order the errors are reported)."""
    size: str
    size_bytes: int
    repeat: int
    runtime: int
    load_timeout: int
    sync_timeout: int
    targets: list[str]
    qsd_copy_mode: str
    qsd_speed: int
    bm_args: str
    bm_start: str
    dd_bs: str
    verify: bool
    fio_warmup: int | float

    @classmethod
    def from_env(cls) -> "Settings":
        repeat = positive_int("REPEAT", env("REPEAT", "3"))
        runtime = positive_int("RUNTIME", env("RUNTIME", "10"))
        load_timeout = positive_int("LOAD_TIMEOUT", env("LOAD_TIMEOUT", "60"))
        sync_timeout = positive_int("SYNC_TIMEOUT", env("SYNC_TIMEOUT", "600"))
        qsd_speed = unsigned_int("QSD_SPEED", env("QSD_SPEED", "0"), "a number of bytes/s")
        fio_warmup = seconds("FIO_WARMUP", env("FIO_WARMUP", "1"))
        bm_start = one_of("BM_START", env("BM_START", ""), ("add", "build"), empty_ok=True)
        copy_mode = one_of("QSD_COPY_MODE", env("QSD_COPY_MODE", "write-blocking"), ("background", "write-blocking"))
        size = env("SIZE", "2G")
        nbytes = size_bytes(size)
        return cls(size=size, size_bytes=nbytes, repeat=repeat, runtime=runtime, load_timeout=load_timeout,
                   sync_timeout=sync_timeout, targets=target_list(env("TARGETS", "raw qsd blockmirror"), KNOWN_TARGETS),
                   qsd_copy_mode=copy_mode, qsd_speed=qsd_speed, bm_args=env("BM_ARGS", ""), bm_start=bm_start,
                   dd_bs=env("DD_BS", "1M"),
                   verify=unsigned_int("VERIFY", env("VERIFY", "1"), "0 or 1") != 0,
                   fio_warmup=fio_warmup, **run_settings("recovery"))


def install_tools(s: Settings) -> None:
    """fio, nbdinfo and fallocate always, qemu-storage-daemon if qsd is a target."""
    need = {"fio": "fio", "nbdinfo": "libnbd-bin", "fallocate": "util-linux"}
    if "qsd" in s.targets:
        need["qemu-storage-daemon"] = "qemu-system-common"
    ensure_commands(need)
    fio.require_engines("nbd", "libaio")


def check_blockmirror(s: Settings) -> None:
    """The binary has the verbs this benchmark drives; BM_START defaults to add when it has it."""
    for verb in ("build", "status", "stop"):
        if blockmirror.help_text(s.bin, verb) is None:
            raise BenchError(f"{s.bin} has no '{verb}' verb (this benchmark needs build, status --json and stop; "
                             "or leave blockmirror out of TARGETS)")
    if "--run-dir" not in (blockmirror.help_text(s.bin, "build") or ""):
        raise BenchError(f"{s.bin} build has no --run-dir option (the control socket is needed for status and stop)")
    has_add = blockmirror.help_text(s.bin, "add") is not None
    if not s.bm_start:
        s.bm_start = "add" if has_add else "build"
    elif s.bm_start == "add" and not has_add:
        raise BenchError(f"{s.bin} has no 'add' verb: use BM_START=build")


class Bench:
    """One recovery benchmark: OLD, NEW, the samples, the time series (progress of each recovery,
    the load's MiB/s) and the failures, and what every target's round shares (a fresh NEW, the 4k
    run, the load and its result, the comparison)."""

    def __init__(self, s: Settings, work: WorkDir):
        self.s, self.work = s, work
        self.old, self.new = work.file("old.raw"), work.file("new.raw")
        self.run_dir = work.file("run")
        self.samples = Samples(work.file("samples.tsv"))
        self.series: dict[str, dict[str, list[dict]]] = {}
        self.failures = 0
        self.load: fio.Load | None = None

    def sample(self, rnd: int, target: str, metric: str, value: float | None, done: bool = True) -> None:
        self.samples.add((str(rnd), target, metric), value, done)

    def record(self, target: str, kind: str, rnd: int, points: list) -> None:
        """A time series of one run ([seconds since the recovery started, value] points), kept
        for the JSON: kind is METRIC_progress (the share copied) or load_foreground (MiB/s)."""
        if points:
            self.series.setdefault(target, {}).setdefault(kind, []).append({"round": rnd, "points": points})

    def tag(self, target: str, rnd: int) -> str:
        """How a run's files in the work dir begin."""
        return f"{target}.r{rnd}"

    def fail(self, message: str) -> None:
        log(f"FAILED: {message}")
        self.failures += 1

    def storage_daemon(self, local_target: bool) -> StorageDaemon:
        """qemu-storage-daemon on OLD and NEW (not local_target: on OLD only), not started."""
        return StorageDaemon(self.old, self.new if local_target else None, self.work.file("qsd-nbd.sock"),
                             self.work.file("qsd-qmp.sock"), self.work.file("qsd.log"), self.s.stop_timeout)

    def reset_new(self) -> None:
        fresh_file(self.new, self.s.size_bytes)

    def verify(self, what: str) -> None:
        """NEW must equal OLD (unless VERIFY=0)."""
        if not self.s.verify:
            return
        try:
            difference = same_content(self.old, self.new)
        except OSError as e:
            difference = f"cannot compare {self.old} with {self.new}: {e}"
        if difference is None:
            log(f"  {what}: NEW equals OLD")
            return
        with open(self.work.file("verify.err"), "a") as f:
            f.write(difference + "\n")
        echo_err(difference)
        self.fail(f"{what}: NEW is not a copy of OLD")

    def run_4k(self, target: str, rnd: int, uri: str | None) -> None:
        """4k randwrite QD32 for RUNTIME s (raw: on OLD with libaio)."""
        where = fio.on_export(uri) if uri else fio.on_file(self.old)
        self._randwrite_4k(target, rnd, "randwrite4k_iops", "4k", ["--name=rw4k", *where], fio.value,
                           f"{target} 4k randwrite QD32")

    def run_4k_pair(self, rnd: int) -> None:
        """4k randwrite QD32 for RUNTIME s on OLD and NEW at once (two libaio jobs): the slower's IOPS."""
        jobs = ["--ioengine=libaio", "--direct=1", "--name=old", f"--filename={self.old}", "--name=new", f"--filename={self.new}"]
        self._randwrite_4k("raw", rnd, "randwrite4k_pair_iops", "4k-pair", jobs, fio.slowest_job_value,
                           "raw OLD and NEW at once, 4k randwrite QD32 each: the slower")

    def _randwrite_4k(self, target: str, rnd: int, metric: str, tag: str, jobs: list[str], parse, what: str) -> None:
        """One fio run of 4k randwrite QD32 for RUNTIME s with the job options `jobs`; IOPS by parse, as metric."""
        out = self.work.file(f"{self.tag(target, rnd)}.{tag}.json")
        args = ["--rw=randwrite", "--bs=4k", "--iodepth=32", f"--runtime={self.s.runtime}", "--time_based", "--randrepeat=0", *jobs]
        value = None
        if fio.run(args, out, fio.time_limit(self.s.runtime)):
            value = fio.or_note(out + ".err", parse, out, "write", "iops")
        if value is None:
            echo_err(tail(out + ".err", 5))
            self.fail(f"{what}, round {rnd}")
        else:
            log(f"  {what}: {value} IOPS")
        self.sample(rnd, target, metric, value)

    def start_load(self, uri: str, tag: str) -> fio.Load:
        """fio 64k randwrite QD8 through the export until load_result stops it."""
        self.load = fio.Load(self.work.file(tag), uri, self.s.load_timeout + self.s.sync_timeout + 120,
                             self.s.stop_timeout)
        return self.load

    def stop_load(self) -> None:
        if self.load is not None:
            self.load.stop()
            self.load = None

    def load_result(self, target: str, rnd: int, start: float, end: float) -> None:
        """Stops the load (LOAD_TAIL s after the recovery ended, so that fio's bandwidth log
        covers the end of the window: fio stopped by a signal does not log its last, partial
        interval) and records its MiB/s within [start, end] (and in the FIO_WARMUP s before
        start, when it ran then: not with BM_START=build), and over time."""
        load = self.load
        if load.daemon.proc is not None and not load.alive():
            log("fio (load) ended before the recovery did:")
            echo_err(tail(load.err_path, 5))
        time.sleep(max(0.0, end + LOAD_TAIL - time.time()))
        self.stop_load()
        self.record(target, "load_foreground", rnd,
                    fio.or_note(load.err_path, load.series, start, end + LOAD_TAIL) or [])
        mibs = fio.or_note(load.err_path, load.window_mibs, start, end)
        if mibs is None:
            echo_err(tail(load.err_path, 5))
            self.fail(f"{target}: no result from the load fio in round {rnd}")
        else:
            log(f"  {target} foreground fio 64k randwrite QD8 during the recovery: {mibs} MiB/s")
        self.sample(rnd, target, "load_fg_mibs", mibs)
        try:
            self.sample(rnd, target, "load_pre_mibs", load.window_mibs(start - self.s.fio_warmup, start))
        except fio.PARSE_ERRORS:
            pass  # no load before the recovery: not a failure

    def not_done(self, rnd: int, target: str, secs: float, pct: float | None, copied: float | None) -> None:
        """Samples of a recovery under load that was not done within LOAD_TIMEOUT: the time it
        had, how much it had copied (percent) and at what rate."""
        self.sample(rnd, target, "load_s", secs, done=False)
        if pct is not None:
            self.sample(rnd, target, "load_pct_at_timeout", round(pct, 1))
        if copied is not None:
            self.sample(rnd, target, "load_copy_mibs_at_timeout", round(copied / 1048576 / secs, 1))

    def save(self, name: str, result: dict) -> None:
        """A recovery's timing, kept in the work dir (with a failed run's logs)."""
        write_json(self.work.file(name), result)

    def timed(self, argv: list[str], err_path: str) -> float | None:
        """Runs a copy command (stderr to err_path, at most SYNC_TIMEOUT + 60 s): its wall time in
        seconds, or None (the tail of its stderr shown) if it failed."""
        t0 = time.time()
        with open(err_path, "w") as err:
            ok = run_limited(argv, self.s.sync_timeout + 60, subprocess.DEVNULL, err) == 0
        if ok:
            return round(time.time() - t0, 3)
        echo_err(tail(err_path))
        return None


# ---------------------------------------------------------------- raw

def raw_round(b: Bench, rnd: int) -> None:
    """The limits: fio reading OLD and writing NEW at once, a dd copy, 4k randwrite on OLD."""
    s = b.s
    out = b.work.file(f"raw.r{rnd}.copy.json")
    b.reset_new()
    args = ["--ioengine=libaio", "--direct=1", "--bs=1M", "--iodepth=16", f"--size={s.size_bytes}",
            "--name=read-old", "--rw=read", f"--filename={b.old}",
            "--name=write-new", "--rw=write", f"--filename={b.new}"]
    secs = None
    if fio.run(args, out, s.sync_timeout + 60):
        secs = fio.or_note(out + ".err", fio.copy_time, out, s.size_bytes)
    if secs is None:
        echo_err(tail(out + ".err", 5))
        b.fail(f"raw fio copy, round {rnd}")
    else:
        log(f"  raw fio read OLD + write NEW at once (1M QD16 each): {secs} s")
    b.sample(rnd, "raw", "copy_fio_s", secs)

    b.reset_new()
    secs = b.timed(["dd", f"if={b.old}", f"of={b.new}", f"bs={s.dd_bs}", "iflag=direct", "oflag=direct",
                    "conv=notrunc", "status=none"], b.work.file("dd.err"))
    if secs is None:
        b.fail(f"dd copy, round {rnd}")
    else:
        log(f"  raw dd copy (bs={s.dd_bs}): {secs} s")
    b.sample(rnd, "raw", "copy_dd_s", secs)
    b.run_4k("raw", rnd, None)
    b.run_4k_pair(rnd)


# ---------------------------------------------------------------- qemu-storage-daemon

def start_qsd(b: Bench, local_target: bool = True) -> StorageDaemon | None:
    """qemu-storage-daemon on OLD and NEW (not local_target: on OLD only, the target added later)
    with its export up; None (logged) if it does not start."""
    for sock in ("qsd-qmp.sock", "qsd-nbd.sock"):
        if os.path.exists(b.work.file(sock)):
            os.unlink(b.work.file(sock))
    qsd = b.storage_daemon(local_target)
    qsd.daemon.start()
    try:
        wait_serving(qsd.daemon, lambda: qsd.uri, b.s.size_bytes, "OLD", b.s.ready_timeout)
        return qsd
    except NotReady:
        qsd.stop()
        return None


def qsd_finish(b: Bench, qsd: StorageDaemon, what: str) -> None:
    """Cancels the ready job (NEW stays a consistent copy), stops qsd, compares."""
    try:
        qsd.cancel()
    except QMPError as e:
        log(f"qsd: {e}")
        b.fail(f"qsd: {what}: block-job-cancel of the ready job failed")
        qsd.stop()
        return
    rc = qsd.stop()
    if rc != 0:
        log(f"warning: qemu-storage-daemon exited with status {rc}")
    b.verify(f"qsd {what}")


def qsd_failed(b: Bench, qsd: StorageDaemon, what: str, e: QMPError) -> None:
    log(f"qsd: {e}")
    b.fail(f"{what}; tail of {qsd.daemon.log_path}:")
    log_tail(qsd.daemon.log_path)


def qsd_recovery(b: Bench, rnd: int, what: str, metric: str, remote: tuple[str, int] | None = None,
                 in_ready: Callable[[StorageDaemon], None] | None = None) -> None:
    """One idle qsd recovery onto NEW (remote: onto the NBD server at (HOST, PORT) instead, added
    with blockdev-add): the time from blockdev-mirror to ready sampled as metric, in_ready run on
    the ready mirror, then the job cancelled, qsd stopped and NEW compared."""
    s = b.s
    qsd = start_qsd(b, local_target=remote is None)
    if qsd is None:
        b.fail(f"qsd did not start (round {rnd})")
        b.sample(rnd, "qsd", metric, None)
        return
    try:
        if remote is not None:
            qsd.add_nbd_target(*remote)
        res = qsd.wait_ready(qsd.start_mirror(s.qsd_copy_mode, s.qsd_speed), s.sync_timeout)
        b.save(f"{b.tag('qsd', rnd)}.{metric}.json", res)
        b.record("qsd", metric.removesuffix("_s") + "_progress", rnd, res["progress"])
        if res["done"]:
            log(f"  qsd {what}: {round(res['seconds'], 3)} s to ready")
            b.sample(rnd, "qsd", metric, res["seconds"])
            if in_ready is not None:
                in_ready(qsd)
            qsd_finish(b, qsd, what)
        else:
            b.fail(f"qsd {what} not ready after {s.sync_timeout}s")
            b.sample(rnd, "qsd", metric, res["seconds"], done=False)
            qsd.stop()
    except QMPError as e:
        qsd_failed(b, qsd, f"qsd {what} (round {rnd})", e)
        b.sample(rnd, "qsd", metric, None)
        qsd.stop()


def qsd_round(b: Bench, rnd: int) -> None:
    """qsd's idle recovery (then 4k randwrite on the ready mirror) and its recovery under load."""
    s = b.s
    b.reset_new()
    qsd_recovery(b, rnd, "idle recovery", "idle_s", in_ready=lambda qsd: b.run_4k("qsd", rnd, qsd.uri))

    b.reset_new()
    qsd = start_qsd(b)
    if qsd is None:
        b.fail(f"qsd did not start (round {rnd})")
        b.sample(rnd, "qsd", "load_s", None)
        return
    b.start_load(qsd.uri, f"qsd.r{rnd}.load")
    time.sleep(s.fio_warmup)
    try:
        res = qsd.wait_ready(qsd.start_mirror(s.qsd_copy_mode, s.qsd_speed), s.load_timeout)
    except QMPError as e:
        b.stop_load()
        qsd_failed(b, qsd, f"qsd blockdev-mirror under load (round {rnd})", e)
        b.sample(rnd, "qsd", "load_s", None)
        qsd.stop()
        return
    b.save(f"qsd.r{rnd}.load.json", res)
    progress = res["progress"]
    b.load_result("qsd", rnd, res["start"], res["end"])
    if res["done"]:
        log(f"  qsd recovery under load: {round(res['seconds'], 3)} s to ready")
        b.sample(rnd, "qsd", "load_s", res["seconds"])
    else:
        off, length, secs = res["offset"], res["len"], res["seconds"]
        log(f"  qsd recovery under load: not ready after {s.load_timeout}s ({off} of {length} bytes); load stopped")
        b.not_done(rnd, "qsd", secs, 100 * off / length if off is not None and length else None, off)
        try:
            rest = qsd.wait_ready(res["start"], s.load_timeout + s.sync_timeout)
            b.save(f"qsd.r{rnd}.load.json.rest", rest)
            progress = progress + rest["progress"]
        except QMPError as e:
            log(f"qsd: {e}")
            rest = {"done": False}
        if not rest["done"]:
            b.fail(f"qsd recovery not done after the load stopped (round {rnd})")
            qsd.stop()
            return
    b.record("qsd", "load_progress", rnd, progress)
    qsd_finish(b, qsd, "recovery under load")


# ---------------------------------------------------------------- blockmirror

class MirrorRun:
    """One blockmirror daemon of a round: started so that its recovery begins at t0."""

    def __init__(self, b: Bench, target: str | None = None):
        """target: what the recovery copies onto (a path or an NBD URI; by default NEW)."""
        self.b = b
        self.target = target or b.new
        self.mirror = blockmirror.Mirror(b.s.bin, NAME, b.run_dir, b.work.file("blockmirror.log"),
                                         b.work.file("blockmirror.out"), b.s.stop_timeout)
        self.uri = ""
        self.t0 = 0.0
        self.startup_s: float | None = None  # from the daemon's start to its export serving
        self.stop_line = ""

    def _start(self, target: str) -> None:
        b = self.b
        sock = b.work.file("bm-nbd.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        self.t0 = time.time()
        daemon = self.mirror.start(["--source", b.old, "--target", target, "--listen", f"unix:{sock}",
                                    *b.s.bm_args.split()], note=f"(target {target})")
        self.uri = wait_serving(daemon, lambda: first_stdout_line(self.mirror.out_path), b.s.size_bytes, "OLD",
                                b.s.ready_timeout)
        self.startup_s = round(time.time() - self.t0, 3)

    def begin(self, load_tag: str | None = None) -> bool:
        """A running mirror whose recovery has started at t0. BM_START=add: the daemon starts
        degraded (--target missing), the load (if any) runs FIO_WARMUP s through its export,
        then `blockmirror add` starts the recovery (as blockdev-mirror does for qsd).
        BM_START=build: the daemon starts with --target NEW (recovery from its start); the load
        can only connect once it listens. False (logged) if something failed."""
        b = self.b
        try:
            if b.s.bm_start != "add":
                self._start(self.target)
                if load_tag:
                    b.start_load(self.uri, load_tag)
                return True
            self._start("missing")
        except NotReady:
            return False
        if load_tag:
            load = b.start_load(self.uri, load_tag)
            time.sleep(b.s.fio_warmup)
            if not load.alive():
                log("the load fio died:")
                echo_err(tail(load.err_path, 5))
                return False
        self.t0 = time.time()
        if not self.mirror.add(self.target):
            log(f"blockmirror add {NAME} {self.target} failed; tail of {self.mirror.log_path}:")
            log_tail(self.mirror.log_path)
            return False
        return True

    def wait(self, name: str, timeout: float) -> dict | None:
        """Waits for in-sync (timeout s after t0 at most); the result, saved as name, or None
        (logged) if the mirror failed."""
        try:
            res = self.mirror.wait_in_sync(self.t0, self.b.s.size_bytes, timeout)
        except blockmirror.MirrorError as e:
            log(f"blockmirror: {e}")
            return None
        self.b.save(name, res)
        return res

    def stop(self) -> int:
        rc, line, stop_failed = self.mirror.stop()
        if stop_failed:
            self.b.failures += 1
        self.stop_line = line
        return rc

    def failed(self, what: str) -> None:
        self.b.fail(f"{what}; tail of {self.mirror.log_path}:")
        log_tail(self.mirror.log_path)

    def finish(self, what: str) -> None:
        """blockmirror stop, then checks it reported in sync, then compares."""
        b = self.b
        rc = self.stop()
        if self.stop_line:
            log(f"  blockmirror stop: {self.stop_line}")
        if rc != 0:
            self.failed(f"blockmirror ({what}) exited with status {rc}")
        if ": in sync" not in tail(self.mirror.out_path):
            last = tail(self.mirror.out_path, 1).strip()
            b.fail(f"blockmirror ({what}) did not report in sync when it stopped: {last}")
        b.verify(f"blockmirror {what}")


def bm_recovery(b: Bench, rnd: int, what: str, metric: str, target: str | None = None,
                in_sync: Callable[[MirrorRun], None] | None = None) -> None:
    """One idle blockmirror recovery onto target (by default NEW): the time to in-sync sampled
    as metric (and its poll resolution), in_sync run on the in-sync mirror, then the mirror
    stopped and NEW compared."""
    s = b.s
    m = MirrorRun(b, target)
    res = m.wait(f"{b.tag('blockmirror', rnd)}.{metric}.json", s.sync_timeout) if m.begin() else None
    if res is not None:
        b.record("blockmirror", metric.removesuffix("_s") + "_progress", rnd, res["progress"])
    if res is None:
        m.failed(f"blockmirror {what} (round {rnd})")
        b.sample(rnd, "blockmirror", metric, None)
        m.stop()
    elif res["done"]:
        log(f"  blockmirror {what}: {round(res['seconds'], 3)} s to in-sync "
            f"(±{round(res['resolution'] / 2, 3)} s, {res['polls']} polls)")
        b.sample(rnd, "blockmirror", metric, res["seconds"])
        b.sample(rnd, "blockmirror", metric.removesuffix("_s") + "_poll_resolution_s", res["resolution"])
        if in_sync is not None:
            in_sync(m)
        m.finish(what)
    else:
        b.fail(f"blockmirror {what} not in sync after {s.sync_timeout}s: {res['status']}")
        b.sample(rnd, "blockmirror", metric, res["seconds"], done=False)
        m.stop()


def bm_round(b: Bench, rnd: int) -> None:
    """blockmirror's idle recovery (then 4k randwrite on the in-sync mirror) and its recovery
    under load."""
    s = b.s
    b.reset_new()
    bm_recovery(b, rnd, "idle recovery", "idle_s", in_sync=lambda m: b.run_4k("blockmirror", rnd, m.uri))

    b.reset_new()
    m = MirrorRun(b)
    tag = f"blockmirror.r{rnd}.load"
    res = m.wait(f"{tag}.json", s.load_timeout) if m.begin(tag) else None
    if res is None:
        b.stop_load()
        m.failed(f"blockmirror recovery under load (round {rnd})")
        b.sample(rnd, "blockmirror", "load_s", None)
        m.stop()
        return
    load = b.load
    progress = res["progress"]
    b.load_result("blockmirror", rnd, m.t0, res["end"])
    # When fio's first write landed, relative to the start of the recovery (< 0: load was on before).
    first = load.first_write()
    if first is not None:
        b.sample(rnd, "blockmirror", "load_fio_delay_s", round(first - 0.1 - m.t0, 3))
    if res["done"]:
        log(f"  blockmirror recovery under load: {round(res['seconds'], 3)} s to in-sync")
        b.sample(rnd, "blockmirror", "load_s", res["seconds"])
    else:
        st = res["status"] or {}
        total, dirty, copied = st.get("regionsTotal"), st.get("regionsDirty"), st.get("bytesCopied")
        speed = f"{_shown(st.get('speedKiBps'))}{_shown(st.get('speedBytesPerSecond'))}"
        log(f"  blockmirror recovery under load: not in sync after {s.load_timeout}s ({_shown(dirty)} of "
            f"{_shown(total)} regions dirty, {_shown(copied)} bytes copied, copy speed {speed} (KiB/s or B/s, "
            "as status names it)); load stopped")
        pct = 100 * (1 - dirty / total) if total and dirty is not None else None
        b.not_done(rnd, "blockmirror", res["seconds"], pct, copied)
        rest = m.wait(f"{tag}.json.rest", s.load_timeout + s.sync_timeout)
        if rest is None or not rest["done"]:
            b.fail(f"blockmirror not in sync after the load stopped (round {rnd})")
            m.stop()
            return
        progress = progress + rest["progress"]
        log(f"  blockmirror in sync {round(rest['seconds'], 3)} s after the recovery started "
            f"(idle after {s.load_timeout}s)")
    b.record("blockmirror", "load_progress", rnd, progress)
    m.finish("recovery under load")


def _shown(v) -> str:
    """A status field as the log shows it: "" when absent."""
    return "" if v is None else f"{v}"


# ---------------------------------------------------------------- run and report

ROUNDS = {"raw": raw_round, "qsd": qsd_round, "blockmirror": bm_round}


def notes(s: Settings) -> list[str]:
    """What the tables' figures mean for this run's settings."""
    out = ["NEW is a fresh fallocated (unwritten) file before every recovery; OLD keeps the writes of earlier runs."]
    if "qsd" in s.targets:
        out.append("qsd: time from the blockdev-mirror command (qsd already running, its export up) to "
                   f"BLOCK_JOB_READY; under load fio runs {s.fio_warmup}s through the export before the command.")
    if "blockmirror" in s.targets:
        if s.bm_start == "add":
            out.append("blockmirror: started degraded (build --target missing); time from 'blockmirror add NAME NEW' "
                       "to the status poll that first saw in-sync (± half the poll interval: see "
                       f"idle_poll_resolution_s); under load fio runs {s.fio_warmup}s through the export before the add.")
        else:
            out.append("blockmirror (BM_START=build): time from the start of 'build --target NEW' (start-up included) "
                       "to the status poll that first saw in-sync; under load fio connects only once the export "
                       "listens, so the first part of the copy runs unloaded (load_fio_delay_s in the JSON).")
    out.append("Foreground MiB/s counts fio's writes within the recovery window only (fio's 100 ms bandwidth log).")
    out.append("2-core machine: figures are noisy (PEERS.md: +-30% run to run); compare ratios from the same run.")
    return out


def meta(s: Settings, failures: int) -> dict:
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {"date": now_iso(), "size_bytes": s.size_bytes, "repeat": s.repeat, "runtime_s": s.runtime,
            "load_timeout_s": s.load_timeout, "targets": s.targets, "qsd_copy_mode": s.qsd_copy_mode,
            "qsd_speed": s.qsd_speed, "blockmirror_args": s.bm_args, "blockmirror_start": s.bm_start or None,
            "dd_bs": s.dd_bs, "verify": s.verify, "fio_warmup_s": s.fio_warmup, **machine_meta(s.workdir_base),
            "loadavg_at_end": loadavg, "fio": first_line("fio", "--version"),
            "qemu_storage_daemon": first_line("qemu-storage-daemon", "--version") if "qsd" in s.targets else None,
            "blockmirror_bin": s.bin or None, **build_meta(), "failed_runs": failures, "notes": notes(s)}


def main(run: Run) -> int:
    s = Settings.from_env()
    install_tools(s)
    run.work = work = WorkDir(s.workdir_base, "blockmirror-bench-recovery", s.results, s.keep_work)
    work.check(2 * s.size_bytes, f"two {s.size} files")
    if "blockmirror" in s.targets:
        s.bin = blockmirror.binary(s.bin, "BLOCKMIRROR_BIN", s.scratch, work.file("build.log"))
        check_blockmirror(s)
    b = Bench(s, work)
    log(f"creating OLD: {s.size} ({s.size_bytes} bytes) of random data in {work.path}")
    random_file(b.old, s.size_bytes)
    drop_cache(b.old)
    os.makedirs(b.run_dir, exist_ok=True)
    n = len(s.targets)
    minutes = s.repeat * (n * s.runtime + 20 * s.size_bytes // 1073741824 + 10) // 60 + 1
    log(f"targets: {' '.join(s.targets)}; {s.repeat} rounds; {s.size} files; 4k runs of {s.runtime}s; "
        f"load timeout {s.load_timeout}s; about {minutes} min")
    for rnd in range(1, s.repeat + 1):
        for i in range(n):
            target = s.targets[(i + rnd - 1) % n]
            log(f"round {rnd}/{s.repeat}: {target}")
            ROUNDS[target](b, rnd)
    if "blockmirror" in s.targets:
        note_logged_warnings(work.file("blockmirror.log"), "blockmirror")
    m = meta(s, b.failures)
    return publish(work.file("meta.json"), m, lambda: report(b.samples, m, s.results, b.series), s.results,
                   b.failures, "failed or a copy did not compare equal")


def cli() -> int:
    return run_main("bench-recovery", main)
