"""The tools a benchmark needs: installed with apt-get when missing (as root), and their versions
for the results.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Iterable

from .log import BenchError, log


def ensure_commands(package_for: dict[str, str], extra_missing: Iterable[str] = ()) -> None:
    """Installs (apt-get, as root) the packages of the commands not on PATH, plus extra_missing
    (packages known to be incomplete); fails if one is still missing afterwards."""
    _install([package_for[c] for c in package_for if shutil.which(c) is None] + list(extra_missing))
    for cmd, pkg in package_for.items():
        if shutil.which(cmd) is None:
            raise BenchError(f"{cmd} is still missing (package {pkg})")


def ensure_packages(packages: Iterable[str]) -> None:
    """Installs (apt-get, as root) the packages dpkg does not know as installed: for packages that
    are not one command (a kernel, libraries) or whose command another package also provides
    (busybox-static's /bin/busybox)."""
    _install([p for p in packages if subprocess.run(["dpkg", "-s", p], stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL).returncode != 0])


def _install(missing: list[str]) -> None:
    """apt-get install of the missing packages (nothing if none); an error unless root."""
    if not missing:
        return
    names = " ".join(missing)
    if os.geteuid() != 0:
        raise BenchError(f"missing packages: {names} (run as root, or: sudo apt-get install {names})")
    log(f"installing {names}")
    apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "update", "-qq"], env=apt_env).returncode != 0:
        raise BenchError("apt-get update failed")
    if subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                      env=apt_env, stdout=subprocess.DEVNULL).returncode != 0:
        raise BenchError(f"apt-get install {names} failed")


def first_line(*cmd: str) -> str | None:
    """The first line a command prints (a version), or None if it cannot run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def fs_type(path: str) -> str | None:
    """The file system type of path, as stat -f names it (tmpfs, ext2/ext3, xfs...)."""
    return first_line("stat", "-f", "-c", "%T", path)
