"""The files the benchmarks measure on: random data (the image, OLD), a fresh allocated NEW, and
the comparison of a copy with its source, all without leaving page cache behind.
"""
from __future__ import annotations

import mmap
import os
import subprocess

from . import MIB


def random_file(path: str, nbytes: int) -> None:
    """nbytes of random data, on the disk (synced) before the first measure."""
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def drop_cache(path: str) -> None:
    """Drops the file's pages from the page cache, so the first reads come from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fresh_file(path: str, nbytes: int) -> None:
    """A new file of nbytes, allocated (as a disk would be) but never written: it reads as zeros
    (fallocate; a sparse file where the file system cannot allocate)."""
    if os.path.exists(path):
        os.unlink(path)
    if subprocess.run(["fallocate", "-l", str(nbytes), path], stderr=subprocess.DEVNULL).returncode != 0:
        with open(path, "wb") as f:
            f.truncate(nbytes)


def same_content(path_a: str, path_b: str) -> str | None:
    """None if the two files are equal, else where they differ (read with O_DIRECT)."""
    chunk = 4 * MIB
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in (path_a, path_b)]
    try:
        bufs = [mmap.mmap(-1, chunk) for _ in fds]  # page-aligned, as O_DIRECT wants
        size = [os.fstat(fd).st_size for fd in fds]
        if size[0] != size[1]:
            return f"{path_a} has {size[0]} bytes, {path_b} {size[1]}"
        off = 0
        while off < size[0]:
            n = [os.preadv(fd, [buf], off) for fd, buf in zip(fds, bufs)]
            if n[0] != n[1] or n[0] <= 0:
                return f"short read at offset {off}"
            a, b = bufs[0][:n[0]], bufs[1][:n[0]]
            if a != b:
                i = next(i for i in range(n[0]) if a[i] != b[i])
                return f"{path_a} and {path_b} differ at byte {off + i}"
            off += n[0]
        return None
    finally:
        for fd in fds:
            os.close(fd)
