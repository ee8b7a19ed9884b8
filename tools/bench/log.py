"""Messages: "[NAME HH:MM:SS] message" log lines on stderr (NAME is "bench", "bench-recovery",
...) or, for a tool whose messages are part of its output (md-vm), "NAME: message" lines on
stdout; the tails of server logs shown when something fails, and the error type whose message
names the setting, file or tool that makes a run impossible.
"""
from __future__ import annotations

import re
import sys
import time

_log_name = "bench"
_plain = False


class BenchError(Exception):
    """A setting, file or tool that makes the run impossible: logged as "error: ...", exit 1."""


def set_log_name(name: str, plain: bool = False) -> None:
    """Names the benchmark in every log line (the old scripts' prefixes are kept); plain: the
    "NAME: message" style on stdout (errors on stderr), for output that callers read."""
    global _log_name, _plain
    _log_name, _plain = name, plain


def log(message: str) -> None:
    """One "[NAME HH:MM:SS] message" line on stderr (plain style: "NAME: message" on stdout)."""
    if _plain:
        print(f"{_log_name}: {message}", flush=True)
    else:
        print(f"[{_log_name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def log_error(message: str) -> None:
    """The error that ends a run: "error: message" as a log line, on stderr in either style."""
    if _plain:
        print(f"{_log_name}: error: {message}", file=sys.stderr, flush=True)
    else:
        log(f"error: {message}")


def echo_err(text: str) -> None:
    """Raw text (tails of logs, tool output) on stderr, between the log lines."""
    if text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()


def tail(path: str, lines: int | None = None) -> str:
    """The last lines of a file (all of it without lines; "" if it does not exist)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:] if lines else f.readlines())
    except OSError:
        return ""


START_MARK = re.compile(r"^=== .* start( .*)? ===$")


def newest_section(path: str) -> list[str]:
    """The lines of a log from its newest "=== HH:MM:SS start ... ===" mark on (the log of the
    newest start of a server whose runs all append to one file)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for i in range(len(lines) - 1, -1, -1):
        if START_MARK.match(lines[i]):
            return lines[i:]
    return lines


def log_tail(path: str) -> None:
    """The last 20 lines of a server log's newest start, on stderr."""
    echo_err("\n".join(newest_section(path)[-20:]))


def note_logged_warnings(path: str, what: str) -> None:
    """Warnings and errors a server logged although every run succeeded (the last 10)."""
    pattern = re.compile(r"warn|error|critical|fatal", re.IGNORECASE)
    try:
        with open(path, errors="replace") as f:
            hits = [line for line in f if pattern.search(line)]
    except OSError:
        return
    if hits:
        log(f"note: {what} logged warnings/errors (last ones):")
        echo_err("".join(hits[-10:]))
