"""The nbdkit peer: its file plugin with cache=none (reads are page-cache backed, so it is not an
O_DIRECT peer); and nbdkit as a remote NBD target over TCP (on a second host), optionally slowed
down by its delay filter.
"""
from __future__ import annotations

import shutil
import subprocess

from .procs import Daemon

DELAYED = ("read", "write", "zero", "trim")  # the requests the delay filter slows down (remote_tcp)


def file_plugin_missing() -> bool:
    """nbdkit is installed but its file plugin is not (Debian 12 ships it in the nbdkit package;
    checked anyway)."""
    if shutil.which("nbdkit") is None:
        return False
    return subprocess.run(["nbdkit", "file", "--version"], capture_output=True).returncode != 0


def has_filter(name: str) -> bool:
    """nbdkit can load the filter (Debian 12's nbdkit package has delay, error...)."""
    return subprocess.run(["nbdkit", f"--filter={name}", "null", "--version"], capture_output=True).returncode == 0


def nbdkit(image: str, sock: str, log_path: str, stop_timeout: float) -> Daemon:
    """nbdkit -f on a unix socket, exiting with the harness (not started)."""
    return Daemon("nbdkit", ["nbdkit", "-f", "--exit-with-parent", "-U", sock, "file", f"file={image}", "cache=none"],
                  log_path=log_path, stop_timeout=stop_timeout)


def remote_tcp(runner: list[str], image: str, address: str, port: int, delay_ms: int, log_path: str,
               stop_timeout: float, note: str) -> Daemon:
    """nbdkit -f serving image (file plugin, its defaults) on address:port over TCP, exiting with
    the harness (not started). runner: the command that runs it (ip netns exec NS: on a second
    host); delay_ms > 0: the delay filter adds that many milliseconds to every read, write, zero
    and trim. note goes into the log's start mark."""
    delay = ["--filter=delay", *(f"delay-{op}={delay_ms}ms" for op in DELAYED)] if delay_ms else []
    return Daemon("nbdkit (second host)", [*runner, "nbdkit", "-f", "--exit-with-parent", "-i", address,
                                           "-p", str(port), *delay[:1], "file", f"file={image}", *delay[1:]],
                  log_path=log_path, stop_timeout=stop_timeout, mark_note=note)
