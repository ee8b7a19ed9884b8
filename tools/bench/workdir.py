"""The work directory: created under WORKDIR_BASE, checked for O_DIRECT and free space before
anything is written, at the end removed (or kept), the logs, outputs and results of a failed run
first copied next to RESULTS.
"""
from __future__ import annotations

import glob
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass

from . import MIB
from .log import BenchError, log
from .packages import fs_type


@dataclass
class WorkDir:
    """The benchmark's scratch directory under WORKDIR_BASE.

    finish() removes it (keep, e.g. KEEP_WORK=1: keeps it); after a failure it first copies the
    logs, outputs and results into RESULTS minus ".json" plus "-logs", so they survive the
    removal (results None: a measure without a results file keeps nothing)."""
    base: str
    prefix: str
    results: str | None
    keep: bool
    path: str = ""

    def __post_init__(self) -> None:
        try:
            os.makedirs(self.base, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix=self.prefix + ".", dir=self.base)
        except OSError as e:
            raise BenchError(f"cannot create a work dir in WORKDIR_BASE={self.base}: {e.strerror}")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def check(self, nbytes: int, what: str) -> None:
        """O_DIRECT works here (tmpfs such as /dev/shm may refuse it) and nbytes + 256 MiB are
        free; what names the files in the message."""
        probe = self.file(".odirect-probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
            try:
                with mmap.mmap(-1, 4096) as buf:  # page-aligned, as O_DIRECT wants
                    os.write(fd, buf)
            finally:
                os.close(fd)
        except OSError:
            raise BenchError(f"{self.base} ({fs_type(self.path)}) refuses O_DIRECT: "
                             "set WORKDIR_BASE to a disk filesystem")
        finally:
            if os.path.exists(probe):
                os.unlink(probe)
        st = os.statvfs(self.path)
        if st.f_bavail * st.f_frsize <= nbytes + 256 * MIB:
            raise BenchError(f"not enough space in {self.base} for {what} (+256 MiB)")

    def finish(self, failed: bool) -> None:
        """Keeps a failed run's logs next to RESULTS, then removes the work dir (unless kept)."""
        if not self.path or not os.path.isdir(self.path):
            return
        if failed and not self.keep and self.results:
            self._keep_logs(self.results[:-5] if self.results.endswith(".json") else self.results)
        if self.keep:
            log(f"work dir kept: {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def _keep_logs(self, keep: str) -> None:
        kept = False
        for pattern in ("*.log", "*.json", "*.err", "*.out", "*.tsv", "*.fio.*"):
            for f in sorted(glob.glob(os.path.join(self.path, pattern))):
                if os.path.isfile(f):
                    os.makedirs(keep + "-logs", exist_ok=True)
                    shutil.copy(f, keep + "-logs")
                    kept = True
        if kept:
            log(f"logs of the failed run kept in {keep}-logs")
