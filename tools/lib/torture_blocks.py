"""Self-identifying sector contents for tools/crash-torture.sh.

Every 512-byte sector the torture writes says which sector it belongs to and which write put it
there, so a reader of an image file can tell, sector by sector, what it holds:

    0   8  magic  b"BMTORT01"
    8   8  round tag (random per round: a sector of another round is garbage here)
    16  8  sector number
    24  8  version: the sequence number of the write (0 = the round's initial content)
    32  4  crc32 of bytes 36..512
    36 476 body: blake2b of bytes 0..32, repeated

A sector is version ZERO when it is all zero bytes (holes, trims, write-zeroes). Anything else is
garbage: a torn sector, a sector of another place or round, or bytes nobody wrote.
"""
import hashlib
import struct
import zlib

SECTOR = 512
MAGIC = b"BMTORT01"
ZERO = -1          # the version of an all-zero sector
GARBAGE = -2       # a sector that is neither zero nor a valid torture sector
_HEAD = struct.Struct("<8sQQQ")
_ZEROES = bytes(SECTOR)


def sector_bytes(tag, sector, version):
    """The 512 bytes of `sector` written by write `version` (ZERO: zeroes)."""
    if version == ZERO:
        return _ZEROES
    head = _HEAD.pack(MAGIC, tag, sector, version)
    body = (hashlib.blake2b(head, digest_size=64).digest() * 8)[:SECTOR - 36]
    return head + struct.pack("<I", zlib.crc32(body)) + body


def payload(tag, first_sector, count, version):
    """The bytes of a write of `count` sectors from `first_sector`, all of write `version`."""
    return b"".join(sector_bytes(tag, first_sector + i, version) for i in range(count))


def version_of(tag, sector, data):
    """Which version `data` (one sector read from an image) is: ZERO, a write's number, or GARBAGE."""
    if data == _ZEROES:
        return ZERO
    if data[:8] != MAGIC:
        return GARBAGE
    _, got_tag, got_sector, version = _HEAD.unpack_from(data)
    if got_tag != tag or got_sector != sector or data != sector_bytes(tag, sector, version):
        return GARBAGE
    return version


def describe(tag, sector, data):
    """A short description of one sector's bytes, for failure reports."""
    version = version_of(tag, sector, data)
    if version == ZERO:
        return "zeroes"
    if version != GARBAGE:
        return f"version {version}"
    if data[:8] == MAGIC:
        _, got_tag, got_sector, got_version = _HEAD.unpack_from(data)
        what = "torn or corrupt" if (got_tag, got_sector) == (tag, sector) else "misplaced"
        return (f"{what} torture sector (header: round tag {got_tag:#x}, sector {got_sector}, "
                f"version {got_version})")
    return f"garbage (first bytes {data[:16].hex()})"


def version_name(version):
    return {ZERO: "zeroes", GARBAGE: "garbage"}.get(version, f"version {version}")
