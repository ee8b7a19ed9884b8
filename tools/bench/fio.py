"""fio, the load generator of every benchmark: the engines, one timed run, a background load, and
reading what fio wrote (its JSON output and its bandwidth log).

The raw peer is fio itself: --ioengine=libaio --direct=1 on the file (the limit the disk sets);
the NBD peers are measured with --ioengine=nbd on their export's URI.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

from .log import BenchError
from .procs import Daemon, run_limited


class FioError(Exception):
    """fio failed, reported an error or did not do the I/O it was asked for."""


def require_engines(*engines: str) -> None:
    """This fio has the engines the benchmark uses (Debian's fio has nbd and libaio)."""
    p = subprocess.run(["fio", "--enghelp"], capture_output=True, text=True)
    names = set(p.stdout.split())
    for engine in engines:
        if engine not in names:
            hint = " (Debian's fio package has it)" if engine == "nbd" else ""
            raise BenchError(f"this fio has no {engine} engine{hint}")


def on_file(path: str) -> list[str]:
    """fio arguments for the raw peer: the file itself, libaio, O_DIRECT."""
    return ["--ioengine=libaio", "--direct=1", f"--filename={path}"]


def on_export(uri: str) -> list[str]:
    """fio arguments for an NBD export."""
    return ["--ioengine=nbd", f"--uri={uri}"]


def run(args: list[str], out: str, limit: float) -> bool:
    """One fio run with --output-format=json to out (stderr to out.err), stopped if it takes more
    than limit seconds; True if fio exited 0."""
    with open(out, "w") as o, open(out + ".err", "w") as e:
        return run_limited(["fio", "--output-format=json", *args], limit, o, e) == 0


def time_limit(runtime: int) -> int:
    """How long a time-based run of runtime seconds may take before it is stopped."""
    return runtime * 3 + 60


def load_json(path: str) -> dict:
    """fio's JSON output; anything fio printed before it (the nbd engine's "fio: connected to
    NBD server") or after it is skipped."""
    with open(path, "r", errors="replace") as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio output")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


def _job(path: str) -> dict:
    """The first job of a run that reported no error."""
    try:
        job = load_json(path)["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise FioError(f"cannot parse {path}: {e}")
    if job.get("error", 0):
        raise FioError(f"fio reported error {job['error']} in {path}")
    return job


def value(path: str, direction: str, metric: str) -> float:
    """IOPS (metric "iops") or MiB/s ("mibs") of a run's read or write side, to 0.1."""
    side = _job(path)[direction]
    if side.get("total_ios", 0) == 0:
        raise FioError(f"fio completed no {direction} I/O in {path}")
    v = side["iops"] if metric == "iops" else side["bw_bytes"] / 1048576
    return float(f"{v:.1f}")


def slowest_job_value(path: str, direction: str, metric: str) -> float:
    """value() of the slowest job of a run of several jobs (each reported on its own)."""
    try:
        jobs = load_json(path)["jobs"]
    except (OSError, ValueError, KeyError) as e:
        raise FioError(f"cannot parse {path}: {e}")
    values = []
    for job in jobs:
        if job.get("error", 0):
            raise FioError(f"fio reported error {job['error']} for job {job.get('jobname')} in {path}")
        side = job[direction]
        if side.get("total_ios", 0) == 0:
            raise FioError(f"fio job {job.get('jobname')} completed no {direction} I/O in {path}")
        values.append(side["iops"] if metric == "iops" else side["bw_bytes"] / 1048576)
    if not values:
        raise FioError(f"no job in {path}")
    return float(f"{min(values):.1f}")


def _percentiles_ns(side: dict, key: str, names: tuple[str, ...]) -> dict[str, float]:
    """One latency's percentiles (ns) of a run's side (key "clat_ns" or "lat_ns"), by fio's
    percentile names ("50.000000", "99.000000"...), of those fio reported."""
    found = side.get(key, {}).get("percentile", {})
    return {p: found[p] for p in names if p in found}


def latency(path: str, direction: str) -> dict:
    """IOPS and the median latencies (µs, to 0.1) of a run's read or write side: "clat_p50_us"
    (completion: submission to completion), "lat_p50_us" (total: slat + clat) and "slat_mean_us".
    For libaio, clat excludes io_submit (it is in slat); through the nbd engine the client's clat
    includes the server's own submit, so lat is the fair comparison with raw. The run needs
    --clat_percentiles=1 --lat_percentiles=1."""
    side = _job(path)[direction]
    if side.get("total_ios", 0) == 0:
        raise FioError(f"fio completed no {direction} I/O in {path}")

    def p50(key: str) -> float:
        return round(_percentiles_ns(side, key, ("50.000000",))["50.000000"] / 1000, 1)

    return {"iops": float(f"{side['iops']:.1f}"), "clat_p50_us": p50("clat_ns"), "lat_p50_us": p50("lat_ns"),
            "slat_mean_us": round(side["slat_ns"]["mean"] / 1000, 2)}


def clat_ms(path: str, direction: str, percentiles: tuple[str, ...]) -> dict[str, float]:
    """Completion latency percentiles of a run's read or write side in ms (to 0.01), by fio's
    percentile names ("50.000000", "99.000000"...), of those fio reported."""
    found = _percentiles_ns(_job(path)[direction], "clat_ns", percentiles)
    return {p: round(v / 1e6, 2) for p, v in found.items()}


# What reading fio's files may raise: missing or truncated files, unexpected content, an error.
PARSE_ERRORS = (OSError, ValueError, KeyError, IndexError, FioError)


def or_note(err_path: str, parse, *args):
    """parse(*args), or None with the reason appended to err_path (the run's .err file, whose
    tail is shown when the run failed)."""
    try:
        return parse(*args)
    except PARSE_ERRORS as e:
        with open(err_path, "a") as f:
            f.write(f"bench: {e}\n")
        return None


def copy_time(path: str, size: int) -> float:
    """The raw copy limit: fio's output of two jobs run at once (read OLD, write NEW, size bytes
    each); the longer job's runtime in seconds."""
    jobs = load_json(path)["jobs"]
    if len(jobs) != 2 or any(j.get("error", 0) for j in jobs):
        raise FioError(f"fio reported an error in {path}")
    moved = (jobs[0]["read"]["io_bytes"], jobs[1]["write"]["io_bytes"])
    if moved != (size, size):
        raise FioError(f"fio moved {moved} bytes, not {size} each way")
    return max(j["job_runtime"] for j in jobs) / 1000


class Load:
    """fio 64k randwrite QD8 through an export in the background, with a bandwidth log every
    100 ms (unix epoch times), until stopped with SIGINT (fio then still writes its JSON)."""

    def __init__(self, work_prefix: str, uri: str, runtime: int, stop_timeout: float):
        self.prefix = work_prefix
        for old in _bw_logs(work_prefix):
            os.unlink(old)
        self.daemon = Daemon(
            "fio", ["fio", "--name=load", *on_export(uri), "--rw=randwrite", "--bs=64k", "--iodepth=8",
                    "--numjobs=1", "--time_based", f"--runtime={runtime}", "--randrepeat=0",
                    f"--write_bw_log={work_prefix}", "--log_avg_msec=100", "--log_unix_epoch=1",
                    "--output-format=json", f"--output={work_prefix}.fio.json"],
            log_path=work_prefix + ".fio.err", stdout_path=work_prefix + ".fio.out",
            stop_signal=signal.SIGINT, stop_timeout=stop_timeout, mark=False).start()

    @property
    def err_path(self) -> str:
        return self.prefix + ".fio.err"

    @property
    def bw_log(self) -> str:
        return self.prefix + "_bw.1.log"

    def alive(self) -> bool:
        return self.daemon.alive()

    def stop(self) -> None:
        self.daemon.stop()

    def first_write(self) -> float | None:
        """When fio's first bandwidth sample was logged (epoch seconds), None if none was."""
        try:
            with open(self.bw_log) as f:
                first = f.readline().split(",")[0].strip()
        except OSError:
            return None
        return int(first) / 1000 if first.isdigit() else None

    def _writes(self) -> list[tuple[float, float]]:
        """The bandwidth log's write entries: (epoch s, KiB/s), in time order."""
        entries = []
        with open(self.bw_log) as f:
            for line in f:
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 3 and parts[2] == "1":  # direction 1 = write
                    entries.append((int(parts[0]) / 1000.0, float(parts[1])))  # epoch s, KiB/s
        return sorted(entries)

    def series(self, start: float, end: float) -> list[list[float]]:
        """fio's write MiB/s over time from its bandwidth log, [seconds since start, MiB/s] for
        the entries up to end (each the average of the 0.1 s before it), from the load's start."""
        return [[round(t - start, 3), round(kibs / 1024, 1)] for t, kibs in self._writes() if t <= end + 0.1]

    def window_mibs(self, start: float, end: float) -> float:
        """fio's write MiB/s within [start, end] (epoch s), to 0.1, from its bandwidth log: entry
        i is the average over (t[i-1], t[i]], the first one covers the 0.1 s before it."""
        _job(self.prefix + ".fio.json")
        entries = self._writes()
        nbytes, covered = 0.0, 0.0
        prev = entries[0][0] - 0.1 if entries else 0.0
        for t, kibs in entries:
            lo, hi = max(prev, start), min(t, end)
            if hi > lo:
                nbytes += kibs * 1024 * (hi - lo)
                covered += hi - lo
            prev = t
        if covered <= 0:
            raise FioError(f"no bandwidth samples of {self.bw_log} within the window")
        return round(nbytes / 1048576 / covered, 1)


def _bw_logs(prefix: str) -> list[str]:
    d, base = os.path.split(prefix)
    return [os.path.join(d, n) for n in os.listdir(d) if n.startswith(base + "_bw.") and n.endswith(".log")]
