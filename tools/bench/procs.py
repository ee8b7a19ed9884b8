"""Processes: a command run with a time limit, and background daemons (servers, mirror daemons,
fio loads) started with their log, waited for until their NBD export serves the right size, and
stopped with a signal, then SIGKILL after STOP_TIMEOUT.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .log import log, log_tail


def exit_status(returncode: int) -> int:
    """A Popen return code as the shell reports it: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_limited(argv: list[str], limit: float, stdout, stderr) -> int:
    """Runs a command for at most limit seconds (as timeout --kill-after=10 LIMIT): SIGTERM at
    the limit, SIGKILL 10 s later; returns its exit status (124 when it was stopped). Its stdin
    is /dev/null (a VM with its serial console on stdio must not read the harness's)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    except OSError as e:
        print(f"cannot run {argv[0]}: {e.strerror}", file=stderr if hasattr(stderr, "write") else sys.stderr)
        return 127
    try:
        return exit_status(proc.wait(timeout=limit))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 124
    finally:
        if proc.returncode is None:  # interrupted (SIGINT/SIGTERM to the harness)
            proc.kill()
            proc.wait()


class NotReady(Exception):
    """A server that died or is not serving in time; the message says which and why."""


@dataclass
class Daemon:
    """A background process (server, mirror daemon, fio load) of one run.

    Its stderr (and stdout unless stdout_path is given) is appended to log_path after a
    "=== HH:MM:SS start[ NOTE] ===" mark, so one log holds every run and log_tail shows the
    newest. All daemons alive are stopped by stop_all (the harness's cleanup)."""
    what: str
    argv: list[str]
    log_path: str
    stdout_path: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30
    mark: bool = True
    mark_note: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Daemon":
        """Starts it in the background (after the start mark in its log, unless mark=False)."""
        note = f" {self.mark_note}" if self.mark_note else ""
        with open(self.log_path, "a") as logf:
            if self.mark:
                logf.write(f"=== {time.strftime('%H:%M:%S')} start{note} ===\n")
                logf.flush()
            out = open(self.stdout_path, "w") if self.stdout_path else logf
            try:
                self.proc = subprocess.Popen(self.argv, stdout=out, stderr=logf, stdin=subprocess.DEVNULL)
            finally:
                if out is not logf:
                    out.close()
        _RUNNING.append(self)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> int:
        """Its exit status (it must have exited)."""
        return exit_status(self.proc.wait())

    def stop(self) -> int:
        """stop_signal, STOP_TIMEOUT s to exit, then SIGKILL; returns the exit status (137 when it
        had to be killed). Stopping a daemon not (any longer) started returns 0."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if self in _RUNNING:
            _RUNNING.remove(self)
        if proc.poll() is not None:
            return exit_status(proc.returncode)
        proc.send_signal(self.stop_signal)
        try:
            return exit_status(proc.wait(timeout=self.stop_timeout))
        except subprocess.TimeoutExpired:
            log(f"warning: {self.what} (pid {proc.pid}) still running {self.stop_timeout:g}s after "
                f"SIG{signal.Signals(self.stop_signal).name[3:]}: SIGKILL")
            proc.kill()
            proc.wait()
            return 137

    def kill(self) -> None:
        """SIGKILL at once (a crash, not a stop) and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.stop()


_RUNNING: list[Daemon] = []


def stop_all() -> None:
    """Stops every daemon still running, newest first (the cleanup after any exit)."""
    for d in reversed(list(_RUNNING)):
        d.stop()


def memory_kib(pid: int) -> dict[str, int]:
    """A process's resident memory from /proc/PID/status, in KiB: VmHWM (the peak so far) and
    VmRSS (now); {} if the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def first_stdout_line(path: str) -> str | None:
    """The first complete line a server printed (servers that print their URI once listening)."""
    try:
        with open(path, errors="replace") as f:
            line = f.readline()
    except OSError:
        return None
    return line.rstrip("\n") if line.endswith("\n") else None


def nbd_size(uri: str) -> int | None:
    """The size an NBD export reports (nbdinfo --size), or None while it does not answer."""
    try:
        p = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    return int(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip().isdigit() else None


def wait_serving(daemon: Daemon, uri_of: Callable[[], str | None], size: int, size_owner: str,
                 timeout: float) -> str:
    """Waits until the daemon's export answers with the expected size; returns its URI.

    uri_of gives the URI once known (None before: the socket is not there yet, the server has
    not printed it). Raises NotReady (after putting the log tail on stderr) if the daemon exits,
    prints something else than an nbd+unix (or, for a TCP server, nbd) URI, exports another size
    or is not ready in time."""
    deadline = time.monotonic() + timeout
    uri = None
    while time.monotonic() < deadline:
        if not daemon.alive():
            rc = daemon.status() if daemon.proc else 0
            log(f"{daemon.what} exited (status {rc}) before it was ready; tail of {daemon.log_path}:")
            log_tail(daemon.log_path)
            raise NotReady(f"{daemon.what} exited")
        uri = uri or uri_of()
        if uri is not None:
            if not uri.startswith(("nbd+unix://", "nbd://")):
                log(f"{daemon.what} printed an unexpected URI: '{uri}'")
                log_tail(daemon.log_path)
                raise NotReady(f"{daemon.what}: unexpected URI")
            got = nbd_size(uri)
            if got is not None:
                if got != size:
                    log(f"{daemon.what} exports {got} bytes, {size_owner} has {size}")
                    raise NotReady(f"{daemon.what}: wrong size")
                return uri
        time.sleep(0.05)
    log(f"{daemon.what} not ready after {timeout:g}s; tail of {daemon.log_path}:")
    log_tail(daemon.log_path)
    raise NotReady(f"{daemon.what}: not ready")
