"""The nbdkit peer: its file plugin with cache=none (reads are page-cache backed, so it is not an
O_DIRECT peer).
"""
from __future__ import annotations

import shutil
import subprocess

from .procs import Daemon


def file_plugin_missing() -> bool:
    """nbdkit is installed but its file plugin is not (Debian 12 ships it in the nbdkit package;
    checked anyway)."""
    if shutil.which("nbdkit") is None:
        return False
    return subprocess.run(["nbdkit", "file", "--version"], capture_output=True).returncode != 0


def nbdkit(image: str, sock: str, log_path: str, stop_timeout: float) -> Daemon:
    """nbdkit -f on a unix socket, exiting with the harness (not started)."""
    return Daemon("nbdkit", ["nbdkit", "-f", "--exit-with-parent", "-U", sock, "file", f"file={image}", "cache=none"],
                  log_path=log_path, stop_timeout=stop_timeout)
