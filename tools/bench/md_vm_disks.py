"""The md-vm guest's disks, host files under one scenario's results directory: vda = OLD (a copy
of the seeded random image), vdb = NEW (zeros), for `fixtures` two small disks with two
partitions each, and last the out disk the guest writes its files to (a tar).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct

from . import MIB
from .log import log

SMALL_DISK = 64 * MIB  # the fixtures' partitioned disks and the out disk
FIXTURE_PARTITIONS_MIB = (30, 30)


def random_image(path: str, nbytes: int, seed: str) -> None:
    """nbytes of pseudo-random data derived from seed: the same bytes for the same seed, so OLD's
    md5 is the same on every machine and every run (SHAKE-256 as a stream cipher stand-in:
    deterministic, incompressible, ~500 MB/s)."""
    chunk = 16 * MIB
    with open(path, "wb") as f:
        for index, at in enumerate(range(0, nbytes, chunk)):
            f.write(hashlib.shake_256(f"{seed}:{index}".encode()).digest(min(chunk, nbytes - at)))


def md5_of(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def pristine_old(work: str, nbytes: int, seed: str) -> str:
    """WORK/old-NBYTES.pristine, the seeded random OLD, generated once per size (its md5 beside
    it, in .md5)."""
    path = os.path.join(work, f"old-{nbytes}.pristine")
    if not (os.path.isfile(path) and os.path.isfile(path + ".md5")):
        log(f"generating OLD: {nbytes} bytes of seeded random data")
        random_image(path + ".tmp", nbytes, seed)
        with open(path + ".md5", "w") as f:
            f.write(md5_of(path + ".tmp") + "\n")
        os.replace(path + ".tmp", path)
    return path


def mbr_partitions(path: str, sizes_mib: tuple[int, ...]) -> None:
    """An MBR partition table with primary partitions of sizes_mib MiB each, from 1 MiB on
    (type 0xfd, Linux raid autodetect)."""
    entries = b""
    start = 2048
    for size in sizes_mib:
        count = size * 2048
        # status, CHS first (unused), type, CHS last, LBA start, sectors
        entries += struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0xFD, b"\xfe\xff\xff", start, count)
        start += count
    with open(path, "r+b") as f:
        f.seek(440)
        f.write(struct.pack("<I", 0x424D4D56) + b"\0\0" + entries.ljust(64, b"\0") + b"\x55\xaa")


def _sparse(path: str, nbytes: int) -> None:
    """truncate -s: a file of nbytes that reads as zeros."""
    with open(path, "wb") as f:
        f.truncate(nbytes)


def make_disks(scenario: str, run_dir: str, pristine: str, nbytes: int) -> tuple[list[str], str]:
    """The disk files of one boot, in the guest's order; returns them and the out disk's name in
    the guest (vdc, or vde behind the fixtures' two partitioned disks)."""
    disks = [os.path.join(run_dir, "old.img"), os.path.join(run_dir, "new.img")]
    shutil.copyfile(pristine, disks[0])
    _sparse(disks[1], nbytes)
    if scenario == "fixtures":  # two small disks with two partitions each: resync=DELAYED
        for d in "cd":
            disks.append(os.path.join(run_dir, f"part-{d}.img"))
            _sparse(disks[-1], SMALL_DISK)
            mbr_partitions(disks[-1], FIXTURE_PARTITIONS_MIB)
    disks.append(out_image(run_dir))
    _sparse(disks[-1], SMALL_DISK)
    return disks, "vd" + "abcdefgh"[len(disks) - 1]


def out_image(run_dir: str) -> str:
    return os.path.join(run_dir, "out.img")


def qemu_drives(disks: list[str]) -> list[str]:
    """qemu's -drive arguments: raw virtio disks, O_DIRECT (cache=none) and native AIO."""
    return [arg for d in disks for arg in ("-drive", f"file={d},if=virtio,format=raw,cache=none,aio=native")]


def remove_legs(run_dir: str, disks: list[str]) -> None:
    """The disk images but the out disk (it stays with the results)."""
    for d in disks:
        if d != out_image(run_dir):
            os.unlink(d)
