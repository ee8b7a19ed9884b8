"""Running one benchmark: its exit status, and the cleanup after any exit (an error, a signal,
the end): every daemon stopped, what the run set up undone (a network namespace...), the work
dir finished.
"""
from __future__ import annotations

import signal
from typing import Callable

from .log import BenchError, log_error, set_log_name
from .procs import stop_all
from .workdir import WorkDir


class Run:
    """One benchmark run: its work dir once created (run_main's cleanup finishes it), and the
    undo steps of what else it set up (run_main's cleanup calls them, newest first, once the
    daemons are stopped; each must not raise)."""
    work: WorkDir | None = None

    def __init__(self) -> None:
        self.cleanups: list[Callable[[], None]] = []


def run_main(name: str, body: Callable[[Run], int], plain_log: bool = False) -> int:
    """Runs a benchmark: SIGTERM and SIGINT end it (143, 130) with the same cleanup as any other
    exit: every daemon stopped, the run's cleanups called, then the work dir finished (a failed
    run's logs kept); a
    BenchError is logged as "error: ..." and exits 1. plain_log: messages in the "NAME: ..."
    style (log.set_log_name)."""
    set_log_name(name, plain_log)

    def on_term(_signum, _frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    run = Run()
    rc = 1
    try:
        rc = body(run)
    except BenchError as e:
        log_error(str(e))
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_all()
        for undo in reversed(run.cleanups):
            undo()
        if run.work is not None:
            run.work.finish(rc != 0)
    return rc
