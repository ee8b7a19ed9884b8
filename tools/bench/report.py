"""One report: every benchmark in one go, each on files in the same WORKDIR_BASE with the same
binary, then REPORT.md and PNG plots in one folder:
  passthrough   blockmirror serve vs raw, qemu-nbd, nbdkit (4k QD32 IOPS, 1M MiB/s)
  qd-sweep      4k randread/randwrite at QD 1-64 on the same peers: IOPS and p50 latency
  recovery      idle and under fio load vs raw copies and qsd's blockdev-mirror, 4k randwrite on
                the in-sync mirror; the progress and the foreground MiB/s over time
  crash-cost    regions a restart copies again after kill -9 of an in-sync mirror
  scaling       1 GiB, 16 GiB sparse, 1 TiB sparse: time to in-sync, RSS, NEW's allocation
  md-vm         kernel md in a qemu VM (TCG) next to the engine (through /dev/nbd0 and through
                fio's nbd engine), with their progress over time (VM=0: left out)
Each measure runs as its own tools/bench.py command (its own set-up and cleanup) with its
RESULTS in the folder: NAME.json, its printed report NAME.md, its messages logs/NAME.log (and on
the terminal). A measure that fails is marked in REPORT.md and the others still run. Ratios are
always between peers of the same measure's run (targets interleaved, rounds rotated).

Plots (report_plots.py) are drawn with Debian's python3-matplotlib, installed with apt when
missing and run by the interpreter that has it; REPORT.md is written by report_md.py.

Usage: tools/bench.py report    (or tools/bench-report.sh; as root on Debian 12: installs what
       is missing)
Environment:
  OUT=/var/tmp/blockmirror-report-DATE   the folder: REPORT.md, *.png, NAME.json, NAME.md, logs/
  MACHINE=        the machine's name in REPORT.md (default: its host name); CPU, memory, kernel
                  and disk are found and shown beside it
  QUICK=1         small files and 1 s runs, to try the whole report in a few minutes (REPEAT
                  defaults to 1 there; its figures are not for citing)
  REPEAT=3        runs behind every figure (at least 3 unless QUICK=1; md-vm: boots per scenario)
  VM=1            the kernel-md VM side by side (minutes under TCG); VM=0 leaves it out
  MEASURES="passthrough qd-sweep recovery crash-cost scaling md-vm"   which measures run
  RENDER_ONLY=1   run nothing: REPORT.md and the plots again from the files in OUT
  SIZE=2G         the files of passthrough, qd-sweep and recovery (quick: 256M)
  RUNTIME=        seconds per fio run (unset: each measure's default, 8, 5 and 10 s; quick: 1)
  QDS="1 4 8 16 32 64"                   the QD sweep's queue depths (quick: "1 8 64")
  SCALING_SIZES="1G 16G 1T"  SCALING_DATA=1G   (quick: "64M 1G 1T", 64M)
  CRASH_SIZE=512M  CRASH_IDLE=5          (quick: 64M, 1)
  VM_SIZE=512M  VM_FIO_MB=64             (quick: 64M, 16); VM_WORK= md-vm's WORK (its default)
  BLOCKMIRROR_BIN=  the binary every measure uses (unset: built once, swift build -c release
                  --scratch-path .build-release)
  WORKDIR_BASE=/var/tmp   where every measure's files go (O_DIRECT, sparse files)
  KEEP_WORK=1     keep each measure's work dir
Exit code: 0 if every measure succeeded, 1 otherwise (REPORT.md and the plots are written either
way).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from . import ROOT, blockmirror
from .log import BenchError, log
from .md_vm import all_scenarios
from .packages import ensure_packages
from .report_md import write_report
from .results import now_iso, write_json
from .run import Run, run_main
from .settings import env, iec_number, one_of, positive_int

SUMMARY = "every benchmark in one go: a folder with REPORT.md, PNG plots and the JSON of every measure"
MEASURES = ("passthrough", "qd-sweep", "recovery", "crash-cost", "scaling", "md-vm")
BENCH_PY = os.path.join(ROOT, "tools", "bench.py")
PLOTS = "bench.report_plots"
# The report's own settings, recorded with the command that made the folder.
REPORT_SETTINGS = ("OUT", "MACHINE", "QUICK", "REPEAT", "VM", "MEASURES", "SIZE", "RUNTIME", "QDS", "SCALING_SIZES",
                   "SCALING_DATA", "CRASH_SIZE", "CRASH_IDLE", "VM_SIZE", "VM_FIO_MB", "VM_WORK", "BLOCKMIRROR_BIN",
                   "WORKDIR_BASE", "KEEP_WORK")
# Settings of the measures that the report sets itself for each one (a value the user gave for
# the report must not leak into a measure under the same name).
MEASURE_SETTINGS = ("RESULTS", "SIZE", "RUNTIME", "REPEAT", "QDS", "SIZES", "DATA", "IDLE", "FIO_MB", "WORK",
                    "KEEP", "TARGETS", "BLOCKMIRROR")


@dataclass
class Settings:
    """The environment settings, checked; quick mode's smaller defaults filled in."""
    out: str
    quick: bool
    repeat: int
    measures: list[str]
    render_only: bool
    bin: str
    workdir_base: str
    keep_work: bool
    size: str
    runtime: str
    qds: str
    scaling_sizes: str
    scaling_data: str
    crash_size: str
    crash_idle: str
    vm_size: str
    vm_fio_mb: str
    vm_work: str
    given: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Settings":
        quick = one_of("QUICK", env("QUICK", "0"), ("0", "1")) == "1"
        repeat = positive_int("REPEAT", env("REPEAT", "1" if quick else "3"))
        if repeat < 3 and not quick:
            raise BenchError(f"REPEAT must be at least 3 (every figure is a median of at least 3 runs; got {repeat}); "
                             "QUICK=1 allows fewer")
        vm = one_of("VM", env("VM", "1"), ("0", "1")) == "1"
        measures = env("MEASURES", " ".join(MEASURES)).split()
        for m in measures:
            if m not in MEASURES:
                raise BenchError(f"unknown measure '{m}' in MEASURES (known: {' '.join(MEASURES)})")
        if not vm and "md-vm" in measures:
            measures.remove("md-vm")
        q = (lambda quick_value, value: quick_value if quick else value)
        return cls(out=env("OUT", f"/var/tmp/blockmirror-report-{time.strftime('%Y%m%d-%H%M%S')}"), quick=quick,
                   repeat=repeat, measures=measures, render_only=env("RENDER_ONLY", "0") == "1",
                   bin=env("BLOCKMIRROR_BIN", ""), workdir_base=env("WORKDIR_BASE", "/var/tmp"),
                   keep_work=env("KEEP_WORK", "0") == "1", size=env("SIZE", q("256M", "2G")),
                   runtime=env("RUNTIME", q("1", "")), qds=env("QDS", q("1 8 64", "1 4 8 16 32 64")),
                   scaling_sizes=env("SCALING_SIZES", q("64M 1G 1T", "1G 16G 1T")),
                   scaling_data=env("SCALING_DATA", q("64M", "1G")), crash_size=env("CRASH_SIZE", q("64M", "512M")),
                   crash_idle=env("CRASH_IDLE", q("1", "5")), vm_size=env("VM_SIZE", q("64M", "512M")),
                   vm_fio_mb=env("VM_FIO_MB", q("16", "64")), vm_work=env("VM_WORK", ""),
                   given={k: os.environ[k] for k in REPORT_SETTINGS if os.environ.get(k)})

    def command(self) -> str:
        """The command that makes a folder like this one (the settings given, then the script)."""
        shown = " ".join(f"{k}={_quoted(v)}" for k, v in self.given.items() if k != "OUT")
        return f"{shown} tools/bench-report.sh".strip()


def _quoted(value: str) -> str:
    return f"'{value}'" if any(c in value for c in " \t\"$") else value


def measure_env(s: Settings, name: str) -> dict[str, str]:
    """The settings the report gives measure name (besides the environment it inherits)."""
    common = {"RESULTS": os.path.join(s.out, f"{name}.json"), "REPEAT": str(s.repeat), "BLOCKMIRROR_BIN": s.bin,
              "WORKDIR_BASE": s.workdir_base, "KEEP_WORK": "1" if s.keep_work else "0"}
    runtime = {"RUNTIME": s.runtime} if s.runtime else {}
    return common | {
        "passthrough": {"SIZE": s.size, **runtime},
        "qd-sweep": {"SIZE": s.size, "QDS": s.qds, **runtime},
        "recovery": {"SIZE": s.size, **runtime},
        "crash-cost": {"SIZE": s.crash_size, "IDLE": s.crash_idle},
        "scaling": {"SIZES": s.scaling_sizes, "DATA": s.scaling_data},
        "md-vm": {"SIZE": s.vm_size, "FIO_MB": s.vm_fio_mb, **({"WORK": s.vm_work} if s.vm_work else {})},
    }[name]


def measure_argv(s: Settings, name: str) -> list[str]:
    """The tools/bench.py command of a measure (md-vm: the scenarios of its `all`)."""
    if name == "md-vm":
        return [sys.executable, "-B", BENCH_PY, "md-vm", "run", *all_scenarios(s.bin)]
    return [sys.executable, "-B", BENCH_PY, name]


def estimate_minutes(s: Settings) -> int:
    """A rough length of the run, from the measures' sizes and runtimes (this machine's disk
    speed unknown: 300 MiB/s assumed; a VM boot ~20 s plus ~40 s per GiB under TCG)."""
    def secs(size: str) -> float:
        return (iec_number(size) or 0) / (300 << 20)

    def rt(default: int) -> int:
        return int(s.runtime or default)

    per = {"passthrough": 16 * (rt(8) + 1.5), "qd-sweep": 2 * len(s.qds.split()) * 4 * (rt(5) + 2),
           "recovery": 3 * rt(10) + 8 * secs(s.size) + 15, "crash-cost": 2 * (6 + int(s.crash_idle)),
           "scaling": 2 * len(s.scaling_sizes.split()) * (2 * secs(s.scaling_data) + 10),
           "md-vm": 4 * (20 + 40 * secs(s.vm_size) * 300 / 1024)}  # 4 boots: ~20 s, the rest TCG-slow
    return int(sum(per[m] for m in s.measures) * s.repeat / 60) + 1


class Child:
    """A measure's process: stdout to a file, stderr to its log and the terminal (stdout too when
    echo_stdout), ended with SIGTERM (then SIGKILL 600 s later) if the report is interrupted;
    its own cleanup then stops its daemons."""

    def __init__(self, argv: list[str], child_env: dict[str, str], stdout_path: str, log_path: str,
                 echo_stdout: bool):
        self.argv, self.env = argv, child_env
        self.stdout_path, self.log_path, self.echo_stdout = stdout_path, log_path, echo_stdout
        self.proc: subprocess.Popen | None = None

    def run(self) -> int:
        with open(self.stdout_path, "wb") as out, open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=self.env, cwd=ROOT)
            threads = [threading.Thread(target=_copy, args=(self.proc.stdout, [out] + ([logf] if self.echo_stdout else []),
                                                            self.echo_stdout), daemon=True),
                       threading.Thread(target=_copy, args=(self.proc.stderr, [logf], True), daemon=True)]
            for t in threads:
                t.start()
            try:
                rc = self.proc.wait()
            finally:  # also when the report is interrupted: the child ends first, then its streams
                self.stop()
                for t in threads:
                    t.join()
                self.proc = None
        return rc

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=600)  # its own cleanup stops its daemons (each STOP_TIMEOUT at most)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _copy(stream, files: list, echo: bool) -> None:
    """Copies a child's stream line by line into files (and onto stderr when echo)."""
    for line in iter(stream.readline, b""):
        for f in files:
            f.write(line)
            f.flush()
        if echo:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
    stream.close()


def run_measures(s: Settings, status: dict) -> None:
    """Runs the measures one after the other; status gets each one's exit status and time."""
    logs = os.path.join(s.out, "logs")
    for name in s.measures:
        overrides = measure_env(s, name)
        child_env = {k: v for k, v in os.environ.items() if k not in MEASURE_SETTINGS} | overrides
        argv = measure_argv(s, name)
        stdout_path = os.path.join(logs, "md-vm.out") if name == "md-vm" else os.path.join(s.out, f"{name}.md")
        child = Child(argv, child_env, stdout_path, os.path.join(logs, f"{name}.log"), echo_stdout=name == "md-vm")
        log(f"{name}: {' '.join(f'{k}={v}' for k, v in overrides.items() if k != 'RESULTS')} "
            f"tools/bench.py {' '.join(argv[3:])}")
        t0 = time.time()
        rc = child.run()
        status["measures"][name] = {"exit": rc, "seconds": round(time.time() - t0, 1), "argv": argv[3:],
                                    "env": {k: v for k, v in overrides.items() if k != "RESULTS"}}
        write_json(os.path.join(s.out, "measures.json"), status)
        log(f"{name}: {'done' if rc == 0 else f'FAILED (exit status {rc}; logs/{name}.log)'} "
            f"in {time.time() - t0:.0f} s")


def plot_python() -> str:
    """An interpreter that imports matplotlib: this one, else Debian's /usr/bin/python3 (whose
    python3-matplotlib is installed when missing)."""
    for py in (sys.executable, "/usr/bin/python3"):
        if os.access(py, os.X_OK) and subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return py
    raise BenchError("no Python with matplotlib (apt-get install python3-matplotlib)")


def draw_plots(out: str, py: str) -> list[str]:
    """The PNGs of the folder's JSON files (report_plots.py in py); the files written."""
    p = subprocess.run([py, "-B", "-m", PLOTS, out], cwd=os.path.join(ROOT, "tools"), capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"the plots failed:\n{p.stderr.strip()[-2000:]}")
    return p.stdout.split()


def main(run: Run) -> int:
    s = Settings.from_env()
    status_path = os.path.join(s.out, "measures.json")
    if s.render_only and not os.path.exists(status_path):
        raise BenchError(f"RENDER_ONLY=1: {status_path} does not exist (not a report folder)")
    os.makedirs(os.path.join(s.out, "logs"), exist_ok=True)
    ensure_packages(["python3-matplotlib"])
    py = plot_python()
    if not s.render_only:
        if not s.bin and s.measures:
            s.bin = blockmirror.binary("", "BLOCKMIRROR_BIN", ".build-release", os.path.join(s.out, "logs", "build.log"))
        status = {"started": now_iso(), "machine": env("MACHINE", platform.node()), "quick": s.quick, "repeat": s.repeat, "command": s.command(),
                  "settings": s.given, "blockmirror_bin": s.bin, "measures": {}}
        write_json(status_path, status)
        log(f"report into {s.out}: {' '.join(s.measures)}; REPEAT={s.repeat}{' (QUICK)' if s.quick else ''}; "
            f"about {estimate_minutes(s)} min")
        run_measures(s, status)
        status["finished"] = now_iso()
        write_json(status_path, status)
    try:
        pngs = draw_plots(s.out, py)
    except BenchError as e:  # the report is still written, without its plots
        log(f"error: {e}")
        pngs, plots_failed = [], True
    else:
        plots_failed = False
    write_report(s.out, pngs)
    log(f"report: {os.path.join(s.out, 'REPORT.md')} ({len(pngs)} plots)")
    with open(status_path) as f:
        failed = [n for n, m in json.load(f)["measures"].items() if m["exit"] != 0]
    if failed:
        log(f"failed measures: {' '.join(failed)} (see logs/ and REPORT.md)")
    return 1 if failed or plots_failed else 0


def cli() -> int:
    return run_main("bench-report", main)
