"""Queue-depth sweep: 4k randread and 4k randwrite at QD 1, 4, 8, 16, 32, 64 on the raw file and
through each passthrough NBD server, on the same image (passthrough.py's targets, servers and
fio runs: a fresh server for every run):
  raw          fio --ioengine=libaio --direct=1 on the image (the limit)
  blockmirror  blockmirror serve IMG --listen unix:SOCK          (fio --ioengine=nbd)
  qemu-nbd     qemu-nbd --cache=none --aio=native                (fio --ioengine=nbd)
  nbdkit       nbdkit file plugin cache=none (reads are page-cache backed: not an O_DIRECT peer)
It separates per-request latency from throughput: at QD1 a request's round trip is all there
is, at QD64 the server's parallelism is. Every run reports IOPS and fio's median (p50)
latencies: clat (submission to completion) and lat (slat + clat). For raw libaio, clat leaves
out io_submit (that is in slat); through NBD the client's clat includes the server's own submit,
so raw's lat is the honest comparison and the tables show both. Every (workload, QD, target)
runs REPEAT times, targets interleaved (order rotated each round); medians with min-max.

Usage: tools/bench.py qd-sweep    (or tools/bench-qd-sweep.sh; as root on Debian 12: installs
       missing packages)
Environment:
  SIZE=2G           image size (random data; a multiple of 1 MiB; K/M/G suffixes)
  RUNTIME=5         seconds per fio run
  REPEAT=3          runs per (workload, QD, target); the median is reported
  QDS="1 4 8 16 32 64"   the queue depths
  TARGETS="raw blockmirror qemu-nbd nbdkit"   subset/order of targets (raw is always added)
  BLOCKMIRROR_BIN=  use this binary instead of building (swift build -c release --scratch-path .build-release)
  WORKDIR_BASE=/var/tmp   where the work dir goes (must allow O_DIRECT: not /dev/shm or tmpfs)
  RESULTS=/var/tmp/blockmirror-bench-qd-sweep-DATE.json   where the JSON results go
  KEEP_WORK=1       keep the work dir (image, fio outputs, server logs) instead of deleting it
  READY_TIMEOUT=60  seconds for a server to accept connections
  STOP_TIMEOUT=30   seconds for a server to exit after SIGTERM
Exit code: 0 if every run succeeded, 1 otherwise.
"""
from __future__ import annotations

from . import fio
from .log import BenchError, log, note_logged_warnings
from .passthrough import Bench, Settings, prepare
from .qd_sweep_report import FIELDS, WORKLOADS, report
from .results import publish
from .run import Run, run_main
from .settings import env, positive_int

SUMMARY = "4k randread/randwrite IOPS and p50 latency per queue depth: raw, blockmirror serve, qemu-nbd, nbdkit"


def queue_depths(value: str) -> list[int]:
    """QDS: distinct positive integers, in the order given."""
    qds: list[int] = []
    for word in value.split():
        qd = positive_int("QDS", word, "a list of positive integers")
        if qd not in qds:
            qds.append(qd)
    if not qds:
        raise BenchError("QDS names no queue depth")
    return qds


def sweep(bench: Bench, qds: list[int]) -> None:
    """REPEAT rounds of every (workload, QD) on every target, the target order rotated each round;
    each run's FIELDS sampled (None for all of them when it failed)."""
    s, n = bench.s, len(bench.s.targets)
    total = s.repeat * len(WORKLOADS) * len(qds) * n
    log(f"targets: {' '.join(s.targets)}; QDs {' '.join(map(str, qds))}; {len(WORKLOADS)} workloads x {s.repeat} "
        f"rounds x {s.runtime}s: {total} runs, about {total * (s.runtime + 2) // 60 + 1} min")
    for rnd in range(1, s.repeat + 1):
        for workload, (_title, rw, direction) in WORKLOADS.items():
            for qd in qds:
                for i in range(n):
                    target = s.targets[(i + rnd - 1) % n]
                    args = [f"--rw={rw}", "--bs=4k", f"--iodepth={qd}", "--clat_percentiles=1", "--lat_percentiles=1"]
                    got = bench.run_on(target, args, f"{target}.{workload}.qd{qd}.{rnd}",
                                       lambda out, d=direction: fio.latency(out, d))
                    for field in FIELDS:
                        bench.samples.add((workload, str(qd), target, field, str(rnd)), got[field] if got else None)
                    shown = "FAILED" if got is None else (f"{got['iops']} IOPS, p50 clat {got['clat_p50_us']} µs, "
                                                          f"lat {got['lat_p50_us']} µs")
                    log(f"round {rnd}/{s.repeat}  {workload} QD{qd:<3} {target:<11} {shown}")


def main(run: Run) -> int:
    s = Settings.from_env("qd-sweep", "5")
    qds = queue_depths(env("QDS", "1 4 8 16 32 64"))
    bench = prepare(run, s, "blockmirror-bench-qd")
    sweep(bench, qds)
    if "blockmirror" in s.targets:
        note_logged_warnings(bench.work.file("blockmirror.log"), "blockmirror")
    meta = dict(bench.meta(), qds=qds)
    return publish(bench.work.file("meta.json"), meta, lambda: report(bench.samples, meta, s.results), s.results,
                   bench.failures, "failed or a server misbehaved")


def cli() -> int:
    return run_main("bench-qd-sweep", main)
