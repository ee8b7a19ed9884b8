"""Settings read from the environment (as the shell scripts did: unset or empty means the
default), each checked with an error that names it and what it got.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from . import MIB
from .log import BenchError


def env(name: str, default: str) -> str:
    """An environment setting; unset and empty both mean the default (as ${NAME:-default})."""
    return os.environ.get(name) or default


def results_path(measure: str) -> str:
    """RESULTS, by default /var/tmp/blockmirror-bench-MEASURE-DATE.json."""
    return env("RESULTS", f"/var/tmp/blockmirror-bench-{measure}-{time.strftime('%Y%m%d-%H%M%S')}.json")


def positive_int(name: str, value: str, what: str = "a positive integer") -> int:
    """A setting that must be an integer > 0; the error names it and what it got."""
    if not re.fullmatch(r"[0-9]+", value) or int(value) == 0:
        raise BenchError(f"{name} must be {what} (got '{value}')")
    return int(value)


def unsigned_int(name: str, value: str, what: str) -> int:
    """A setting that must be an integer >= 0."""
    if not re.fullmatch(r"[0-9]+", value):
        raise BenchError(f"{name} must be {what} (got '{value}')")
    return int(value)


def seconds(name: str, value: str) -> int | float:
    """A setting that must be a non-negative number of seconds (int when written as one)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        raise BenchError(f"{name} must be a number of seconds (got '{value}')")
    return float(value) if "." in value else int(value)


def one_of(name: str, value: str, words: tuple[str, ...], empty_ok: bool = False) -> str:
    """A setting that must be one of a few words (or, with empty_ok, unset: "")."""
    if value not in words and not (empty_ok and value == ""):
        raise BenchError(f"{name} must be {' or '.join(words)}")
    return value


_IEC = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def iec_number(value: str) -> float | None:
    """A size as numfmt --from=iec reads it (K/M/G... powers of 1024, rounded up to a whole byte;
    a trailing "B" or "iB" is dropped; a fraction without a suffix stays one), None if it is not
    one."""
    spec = value[:-2] if value.endswith("iB") else value
    spec = spec[:-1] if spec.endswith("B") else spec
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)([KMGTPE]?)", spec)
    if not m:
        return None
    number = float(m.group(1)) * 1024 ** _IEC[m.group(2)]
    return math.ceil(number) if m.group(2) else number


def size_bytes(value: str) -> int:
    """SIZE as numfmt --from=iec reads it (iec_number), which must be a positive multiple of
    1 MiB."""
    nbytes = iec_number(value)
    if nbytes is None:
        raise BenchError(f"cannot parse SIZE='{value}' (use e.g. 512M, 2G)")
    if nbytes <= 0 or nbytes != int(nbytes) or int(nbytes) % MIB:
        shown = int(nbytes) if nbytes == int(nbytes) else value
        raise BenchError(f"SIZE must be a positive multiple of 1 MiB (got {shown} bytes)")
    return int(nbytes)


def target_list(value: str, known: list[str], reference: str | None = "raw") -> list[str]:
    """TARGETS: the reference first (always: raw, the limit; None: a measure without one), then
    the others once each, in order; at least one."""
    targets = [reference] if reference else []
    for t in value.split():
        if t not in known:
            raise BenchError(f"unknown target '{t}' (known: {' '.join(known)})")
        if t not in targets:
            targets.append(t)
    if not targets:
        raise BenchError(f"TARGETS names no target (known: {' '.join(known)})")
    return targets


@dataclass
class RunSettings:
    """What every measure's run reads alike: the binary (BLOCKMIRROR_BIN, else built in SCRATCH),
    where its files go (WORKDIR_BASE), RESULTS, KEEP_WORK, and how long a server has to start and to
    stop. A measure's Settings extends it and takes `run_settings(...)` as keyword arguments."""
    bin: str
    scratch: str
    workdir_base: str
    results: str
    keep_work: bool
    ready_timeout: int
    stop_timeout: int


def run_settings(measure: str, stop_timeout: str = "60", qemu_paths: bool = True) -> dict:
    """The RunSettings fields from the environment (RESULTS named after `measure`); qemu_paths:
    the files go into qemu options too, where a comma in WORKDIR_BASE would split them."""
    workdir_base = env("WORKDIR_BASE", "/var/tmp")
    if qemu_paths and "," in workdir_base:
        raise BenchError("WORKDIR_BASE must not contain a comma (qemu's option syntax)")
    return dict(bin=env("BLOCKMIRROR_BIN", ""), scratch=env("SCRATCH", ".build-release"), workdir_base=workdir_base,
                results=results_path(measure), keep_work=env("KEEP_WORK", "0") == "1",
                ready_timeout=positive_int("READY_TIMEOUT", env("READY_TIMEOUT", "60")),
                stop_timeout=positive_int("STOP_TIMEOUT", env("STOP_TIMEOUT", stop_timeout)))
