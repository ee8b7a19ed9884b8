"""The peer under test: the blockmirror binary (given, or built with SwiftPM), `blockmirror serve`
as a passthrough NBD server, and `blockmirror build` as a mirror daemon driven with its verbs
(add, status --json, stop).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

from . import ROOT
from .log import BenchError, echo_err, log, tail
from .procs import Daemon

SWIFT_DIRS = ("/opt/swift/usr/bin", "/usr/share/swift/usr/bin")


def binary(given: str, setting: str, scratch: str, build_log: str, reuse: bool = False) -> str:
    """The blockmirror executable: given (the setting's value), or built with
    `swift build -c release --scratch-path SCRATCH` (the build's output in build_log); reuse: a
    release build already in SCRATCH is taken as it is."""
    built = os.path.join(ROOT, scratch, "release", "blockmirror")
    path = given or (built if reuse and os.access(built, os.X_OK) else _build(scratch, build_log))
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise BenchError(f"{setting}={path} is not an executable")
    return path


def _build(scratch: str, build_log: str) -> str:
    if shutil.which("swift") is None:
        for d in SWIFT_DIRS:
            if os.access(os.path.join(d, "swift"), os.X_OK):
                os.environ["PATH"] = f"{d}:{os.environ.get('PATH', '')}"
                break
    if shutil.which("swift") is None:
        raise BenchError("no Swift toolchain on PATH (or set BLOCKMIRROR_BIN)")
    cmd = ["swift", "build", "-c", "release", "--scratch-path", scratch]
    log(f"building blockmirror: {' '.join(cmd)}")
    with open(build_log, "w") as f:
        # Its own process group: an interrupted harness ends the compilers too, not only swift.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ok = proc.wait() == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if not ok:
        echo_err(tail(build_log, 30))
        raise BenchError("the release build failed (log above)")
    bin_dir = subprocess.run([*cmd, "--show-bin-path"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return os.path.join(bin_dir, "blockmirror")


def help_text(bin_path: str, verb: str) -> str | None:
    """`blockmirror VERB --help` (stdout and stderr), None if the binary has no such verb."""
    p = subprocess.run([bin_path, verb, "--help"], capture_output=True, text=True)
    return p.stdout + p.stderr if p.returncode == 0 else None


def serve(bin_path: str, image: str, sock: str, log_path: str, uri_path: str, stop_timeout: float) -> Daemon:
    """`blockmirror serve IMAGE --listen unix:SOCK` (not started); it prints its URI on its first
    stdout line (uri_path) once it listens."""
    return Daemon("blockmirror", [bin_path, "serve", image, "--listen", f"unix:{sock}"],
                  log_path=log_path, stdout_path=uri_path, stop_timeout=stop_timeout)


class MirrorError(Exception):
    """The mirror failed, is gone, or its status cannot be read; the message says which."""


class Mirror:
    """One `blockmirror build NAME` daemon and the verbs that drive it through its control socket
    in run_dir. Its stdout (the URI line, then what it reports when it stops) goes to out_path,
    its stderr to log_path."""

    def __init__(self, bin_path: str, name: str, run_dir: str, log_path: str, out_path: str, stop_timeout: float):
        self.bin, self.name, self.run_dir = bin_path, name, run_dir
        self.log_path, self.out_path, self.stop_timeout = log_path, out_path, stop_timeout
        self.daemon: Daemon | None = None

    def start(self, args: list[str], note: str) -> Daemon:
        """`blockmirror build NAME ARGS... --run-dir RUN` in the background (note goes into the
        log's start mark)."""
        if os.path.exists(self.out_path):
            os.unlink(self.out_path)
        self.daemon = Daemon("blockmirror", [self.bin, "build", self.name, *args, "--run-dir", self.run_dir],
                             log_path=self.log_path, stdout_path=self.out_path,
                             stop_timeout=self.stop_timeout, mark_note=note).start()
        return self.daemon

    def add(self, target: str) -> bool:
        """`blockmirror add NAME TARGET`: starts the recovery onto TARGET (output to the log)."""
        with open(self.log_path, "a") as f:
            return subprocess.run([self.bin, "add", self.name, target, "--run-dir", self.run_dir],
                                  stdout=f, stderr=subprocess.STDOUT).returncode == 0

    def status(self) -> dict:
        """`blockmirror status NAME --json`; raises MirrorError with what went wrong."""
        try:
            p = subprocess.run([self.bin, "status", self.name, "--run-dir", self.run_dir, "--json"],
                               capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            raise MirrorError("blockmirror status took more than 10 s")
        if p.returncode != 0:
            raise MirrorError(p.stderr.strip() or p.stdout.strip() or f"exit status {p.returncode}")
        try:
            return json.loads(p.stdout)
        except ValueError:
            raise MirrorError(f"blockmirror status printed no JSON: {p.stdout.strip()[:200]}")

    def stop(self) -> tuple[int, str, bool]:
        """`blockmirror stop NAME` (drains, flushes, waits for the exit), then the daemon's stop
        (SIGTERM, SIGKILL). Returns its exit status, what `stop` printed and whether `stop`
        failed (with a warning logged)."""
        line, stop_failed = "", False
        if self.daemon is None:
            return 0, line, stop_failed
        if self.daemon.alive():
            with open(self.log_path, "a") as errf:
                try:
                    p = subprocess.run([self.bin, "stop", self.name, "--run-dir", self.run_dir],
                                       stdout=subprocess.PIPE, stderr=errf, text=True, timeout=self.stop_timeout)
                    line, stop_failed = p.stdout.rstrip("\n"), p.returncode != 0
                except subprocess.TimeoutExpired as e:
                    out = e.stdout or ""
                    line = (out.decode(errors="replace") if isinstance(out, bytes) else out).rstrip("\n")
                    stop_failed = True
            if stop_failed:
                log(f"warning: blockmirror stop {self.name} failed (see {self.log_path}); SIGTERM")
        rc = self.daemon.stop()
        self.daemon = None
        return rc, line, stop_failed

    def wait_in_sync(self, start: float, size: int, timeout: float) -> dict:
        """Polls status until "state" is "in-sync" or timeout seconds after start (epoch) have
        passed; raises MirrorError on "target-failed"/"stopping", a gone daemon or a status that
        keeps failing.

        The poll interval adapts to the copy's progress (0.25 s, down to 0.02 s when the end is
        near) so the status processes cost little CPU. Returns {"done", "start", "end",
        "seconds", "resolution", "polls", "poll_cpu_wall_s", "status", "progress"[, "error"]}: end
        is the middle between the last poll that did not see in-sync and the first that did,
        resolution the width of that interval; progress the polls' [seconds since start, share of
        the regions clean] (1 - regionsDirty / regionsTotal), ending with [seconds, 1] when done."""
        deadline = start + timeout
        prev_seen = start        # the last time the state was seen not in sync
        polls, cost = 0, 0.0
        samples = []             # (time, bytesCopied) for the rate estimate
        progress: list[list[float]] = []
        last, last_err, errors_since = None, "", 0
        done, end, resolution = False, None, None
        while True:
            t0 = time.time()
            try:
                st, err = self.status(), ""
            except MirrorError as e:
                st, err = None, str(e)
            t1 = time.time()
            polls += 1
            cost += t1 - t0
            seen = (t0 + t1) / 2
            if st is None:
                last_err = err
                errors_since += 1
                # The control socket may not exist yet right after the start; give it 30 s.
                if self.daemon is None or not self.daemon.alive():
                    raise MirrorError(f"the blockmirror daemon (pid {self.daemon.pid if self.daemon else '?'}) "
                                      f"is gone; last status error: {err}")
                if seen - start > 30 and errors_since > 20:
                    raise MirrorError(f"blockmirror status keeps failing: {err}")
            else:
                errors_since = 0
                last = st
                state = st.get("state")
                if state == "in-sync":
                    done, end, resolution = True, (prev_seen + seen) / 2, seen - prev_seen
                    progress.append([round(end - start, 3), 1.0])
                    break
                if st.get("regionsTotal") and isinstance(st.get("regionsDirty"), int):
                    progress.append([round(seen - start, 3), round(1 - st["regionsDirty"] / st["regionsTotal"], 5)])
                if state in ("target-failed", "stopping"):
                    raise MirrorError(f"blockmirror state is {state}: {json.dumps(st)}")
                prev_seen = seen
                if isinstance(st.get("bytesCopied"), (int, float)):
                    samples.append((seen, st["bytesCopied"]))
            now = time.time()
            if now >= deadline:
                end = now
                break
            time.sleep(max(0.0, min(_next_poll(st, last, samples, size), deadline - time.time())))
        out = {"done": done, "start": start, "end": end, "seconds": end - start, "resolution": resolution,
               "polls": polls, "poll_cpu_wall_s": cost, "status": last, "progress": progress}
        if last is None and last_err:
            out["error"] = last_err
        return out


def _next_poll(st: dict | None, last: dict | None, samples: list, size: int) -> float:
    """0.25 s, or sooner when the copy is about to end at the measured rate (0.05 s while the
    status cannot be read)."""
    if last is not None and len(samples) >= 2 and samples[-1][0] > samples[0][0]:
        rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        total = last.get("regionsTotal") or 0
        dirty = last.get("regionsDirty") or 0
        if rate > 0 and total:
            left = dirty * (last.get("regionSize") or size / total) / rate
            return min(0.25, max(0.02, left / 3))
        return 0.25
    return 0.05 if st is None else 0.25
