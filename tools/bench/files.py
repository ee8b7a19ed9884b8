"""The files the benchmarks measure on: random data (the image, OLD), a sparse OLD holding the
same data spread over a larger device, a fresh allocated (or sparse) NEW, what a file has
allocated, and the comparison of a copy with its source (only where either holds data), all
without leaving page cache behind.
"""
from __future__ import annotations

import errno
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


def sparse_file(path: str, nbytes: int, data_bytes: int, chunk: int = MIB) -> int:
    """A file of nbytes that holds data_bytes of random data in chunk-sized pieces spread evenly
    from its start to its end (the last piece ends at the end), holes in between; synced.
    Returns the bytes written (data_bytes rounded down to whole chunks, at least one)."""
    pieces = max(1, min(data_bytes // chunk, nbytes // chunk))
    step = (nbytes - chunk) // max(1, pieces - 1) // chunk * chunk if pieces > 1 else 0
    with open(path, "wb") as f:
        f.truncate(nbytes)
        for i in range(pieces):
            at = nbytes - chunk if i == pieces - 1 and pieces > 1 else i * step
            f.seek(at)
            f.write(os.urandom(chunk))
        f.flush()
        os.fsync(f.fileno())
    return pieces * chunk


def sparse_new(path: str, nbytes: int) -> None:
    """A new file of nbytes that is one hole (truncate): what a copy allocates in it shows."""
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(nbytes)


def allocated_bytes(path: str) -> int:
    """The bytes the file system allocated to the file (st_blocks x 512)."""
    return os.stat(path).st_blocks * 512


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) ranges SEEK_DATA/SEEK_HOLE report as data (the whole file where the file
    system cannot tell)."""
    out, at = [], 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after at
                break
            return [(0, size)]
        end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        out.append((start, end))
        at = end
    return out


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(a + b):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


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
    """None if the two files are equal, else where they differ (read with O_DIRECT). Only the
    ranges where either file holds data are read: holes in both read as zeros in both (a 1 TiB
    sparse pair compares in the time its data takes)."""
    chunk = 4 * MIB
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in (path_a, path_b)]
    try:
        bufs = [mmap.mmap(-1, chunk) for _ in fds]  # page-aligned, as O_DIRECT wants
        size = [os.fstat(fd).st_size for fd in fds]
        if size[0] != size[1]:
            return f"{path_a} has {size[0]} bytes, {path_b} {size[1]}"
        for start, end in _union(*(data_ranges(fd, size[0]) for fd in fds)):
            off = start // 4096 * 4096  # O_DIRECT offsets are block-aligned
            while off < end:
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
