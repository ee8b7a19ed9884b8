#!/usr/bin/python3
"""The crash torture of tools/crash-torture.sh: kill -9 of a mirror daemon at random moments of a
recovery under a journaled NBD workload, restarts with the same bitmap, and a sector-by-sector
check of both legs against every acknowledged write.

  crash_torture.py --bin BLOCKMIRROR [--rounds N] [--seed S] [--size 64M] [--kills 1-4]
                   [--work DIR] [--keep] [--max-kept 3] [--summary-json FILE] [--quiet]

One round, on fresh image files (OLD: self-identifying sectors, a few holes; NEW: random bytes or
sparse):
  1. `blockmirror build m0 --source OLD --target NEW|missing --bitmap B` (a degraded start gets
     `add` later), a copy held to a random --speed-max, writers (torture_writer.py) on 1-3 NBD
     connections journaling every request;
  2. kill -9 of the daemon at a chosen moment, one of: during the copy (copy), at a write of the
     bitmap file (save: inotify on its directory, so the moment is seen without reading the file),
     during `add` (attach), right after `add` returned (after-attach), while degraded (degraded),
     during `check` or `check --repair` of the in-sync mirror (check), during `stop` (stop), right
     after a restart while it resumes (resume);
  3. after each kill: the writers' journals give what each sector may hold; OLD must hold an
     acceptable version in every sector, and NEW in every sector last changed by a write
     acknowledged while the target was attached (acknowledged = completed on both legs);
  4. restart with the same bitmap and target, again 1-4 times (--kills), then a last run: writes,
     `speed --max unlimited`, in sync, `check` (or `check --repair`): 0 mismatched sectors,
     `stop`: "in sync"; then every sector of OLD checked once more and NEW == OLD byte for byte.

A request in flight at a kill may or may not have happened: both contents are accepted for its
sectors. A failing round's directory (images, journals, daemon logs, round.log) is kept; the exit
status is 1 if any round failed. What kill -9 cannot show (docs/INVARIANTS.md, invariant 4): the
kernel completes the libaio requests a dying process submitted, so the write-intent rule itself is
only exercised where a kill lands between a write's two legs.
"""
import argparse
import ctypes
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # tools/lib must stay as it is in git
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from torture_blocks import SECTOR, ZERO, payload  # noqa: E402
from torture_journal import Journal, SectorModel  # noqa: E402

NAME = "m0"
KILL_POINTS = ["copy", "save", "attach", "after-attach", "degraded", "check", "stop", "resume"]


class RoundFailure(Exception):
    """Ends a round early: something the round could not go on from (a hang, a refused restart)."""


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def human_bytes(n):
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


class BitmapWatch:
    """inotify on the bitmap file's directory: tells when the daemon writes (or replaces) the
    bitmap, without reading it (its format is the engine's business)."""
    IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
    IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

    def __init__(self, directory):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_MODIFY | self.IN_MOVED_TO | self.IN_CREATE
        if libc.inotify_add_watch(self.fd, directory.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def drain(self):
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout):
        """True once the bitmap directory saw a write within `timeout` seconds."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def close(self):
        os.close(self.fd)


class Daemon:
    """One run of `blockmirror build` (a daemon incarnation) and the verbs run against it."""

    def __init__(self, round_, index, target):
        self.round = round_
        self.index = index
        self.target = target
        r = round_
        self.stdout_path = os.path.join(r.dir, f"daemon-{index}.stdout")
        self.stderr_path = os.path.join(r.dir, f"daemon-{index}.log")
        self.arguments = [r.bin, "build", NAME, "--source", r.old, "--target", target, "--bitmap", r.bitmap,
                          "--region-size", str(r.region_size), "--speed-max", str(r.speed_max),
                          "--listen", f"unix:{r.socket}", "--run-dir", r.run_dir, "--log-level", "debug"]
        r.log(f"start daemon {index}: {' '.join(self.arguments)}")
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(self.arguments, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.started = time.monotonic()
        self.uri = None
        deadline = time.monotonic() + 120
        while self.uri is None:
            with open(self.stdout_path) as f:
                line = f.readline()
            if line.endswith("\n"):
                self.uri = line.strip()
            elif self.process.poll() is not None:
                raise RoundFailure(f"daemon {index} exited with status {self.process.returncode} before serving "
                                   f"(a restart with the same bitmap was refused?):\n{self.log_tail()}")
            elif time.monotonic() > deadline:
                raise RoundFailure(f"daemon {index} printed no URI within 120 s:\n{self.log_tail()}")
            else:
                time.sleep(0.01)
        r.log(f"daemon {index} serves {self.uri} (pid {self.process.pid})")

    def log_tail(self, lines=30):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def alive(self):
        return self.process.poll() is None

    def cli(self, *arguments, timeout=300):
        return self.round.cli(*arguments, timeout=timeout)

    def status(self):
        """The status object, or None if the daemon does not answer (gone)."""
        result = self.cli("status", NAME, "--json", timeout=120)
        if result.returncode != 0:
            if not self.alive():
                return None
            raise RoundFailure(f"status failed while the daemon runs: {result.stdout}{result.stderr}")
        return json.loads(result.stdout)

    def wait_for(self, what, condition, timeout=600):
        """Polls the status until `condition(status)`; fails the round on a timeout or an exit."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status is None:
                raise RoundFailure(f"daemon {self.index} exited (status {self.process.returncode}) while waiting for {what}:\n{self.log_tail()}")
            if status.get("state") == "target-failed":
                raise RoundFailure(f"the target failed while waiting for {what}: {status.get('failure')}")
            if condition(status):
                return status
            if time.monotonic() > deadline:
                raise RoundFailure(f"no {what} within {timeout} s; last status {json.dumps(status)}")
            time.sleep(0.2)

    def kill(self):
        """SIGKILL, then reap: once reaped, the kernel has finished every I/O the process submitted."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def exited_by_itself(self):
        return self.process.poll() is not None and self.process.returncode != -signal.SIGKILL


class WriterRun:
    """One torture_writer.py process against one daemon incarnation."""

    def __init__(self, round_, index, uri, rng):
        r = round_
        self.round = r
        self.journal_path = os.path.join(r.dir, f"writer-{index}.journal")
        self.stderr_path = os.path.join(r.dir, f"writer-{index}.stderr")
        self.settings = {"connections": rng.randint(1, 3), "depth": rng.choice([4, 8, 16, 32]),
                         "rate": rng.choice([300, 800, 1500, 3000]), "mode": rng.choice(["steady", "bursts"])}
        arguments = [sys.executable, os.path.join(HERE, "torture_writer.py"), "--uri", uri, "--journal", self.journal_path,
                     "--tag", str(r.tag), "--seq-base", str((index + 1) * 1_000_000_000), "--seed", str(rng.getrandbits(48))]
        for key, value in self.settings.items():
            arguments += [f"--{key}", str(value)]
        r.log(f"writer {index}: {self.settings}")
        with open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout=120):
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RoundFailure(f"the writer did not exit within {timeout} s (see {self.stderr_path})")
        if self.process.returncode != 0:
            with open(self.stderr_path, errors="replace") as f:
                raise RoundFailure(f"the writer failed (exit {self.process.returncode}):\n{f.read()[-3000:]}")
        return Journal(self.journal_path)


class Round:
    def __init__(self, options, number, seed, directory):
        self.options = options
        self.number = number
        self.seed = seed
        self.rng = random.Random(seed)
        self.dir = directory
        self.bin = options.bin
        self.size = options.size
        self.old = os.path.join(directory, "old.img")
        self.new = os.path.join(directory, "new.img")
        os.makedirs(os.path.join(directory, "bitmap"))
        self.bitmap = os.path.join(directory, "bitmap", "m0.bitmap")
        self.socket = os.path.join(directory, "nbd.sock")
        self.run_dir = os.path.join(directory, "run")
        self.tag = self.rng.getrandbits(63)
        self.region_size = self.rng.choice([64 << 10, 128 << 10, 256 << 10, 1 << 20])
        self.speed_max = 0
        self.failures = []
        self.kills = []            # kill points, in order
        self.children = []         # processes to end if the round stops early
        self.checks = 0
        self.diverged_in_sync = 0  # sectors on one leg only after a kill of an in-sync mirror
        self.log_file = open(os.path.join(directory, "round.log"), "w", buffering=1)
        self.model = None

    def log(self, text):
        self.log_file.write(f"{time.monotonic():.3f} {text}\n")

    def cli(self, *arguments, timeout=300):
        command = [self.bin, *arguments, "--run-dir", self.run_dir]
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RoundFailure(f"timed out after {timeout} s: {' '.join(command)}")
        self.log(f"$ {' '.join(arguments)} -> {result.returncode}: {(result.stdout + result.stderr).strip()[:400]}")
        return result

    def spawn_cli(self, *arguments):
        """A verb run in the background (to kill the daemon while it is being served)."""
        command = [self.bin, *arguments, "--run-dir", self.run_dir]
        self.log(f"$ {' '.join(arguments)} &")
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.children.append(process)
        return process

    def pick_speed(self):
        """A --speed-max (KiB/s) for which a full copy takes 1.5-8 s, so the copy is still running
        at a kill; one run in five copies 20 times faster, to race the writes harder."""
        seconds = self.rng.uniform(1.5, 8.0) / (20 if self.rng.random() < 0.2 else 1)
        self.speed_max = max(1000, int(self.size / 1024 / seconds))

    # -- images --

    def make_images(self):
        sectors = self.size // SECTOR
        per_mib = (1 << 20) // SECTOR
        holes = set()
        for _ in range(self.rng.randint(0, 3)):
            start = self.rng.randrange(self.size >> 20)
            holes.update(range(start, min(start + self.rng.randint(1, 4), self.size >> 20)))
        initial = [0] * sectors
        with open(self.old, "wb") as f:
            f.truncate(self.size)
            for mib in range(self.size >> 20):
                if mib in holes:
                    initial[mib * per_mib:(mib + 1) * per_mib] = [ZERO] * per_mib
                    continue
                os.pwrite(f.fileno(), payload(self.tag, mib * per_mib, per_mib, 0), mib << 20)
        self.new_kind = self.rng.choice(["random", "random", "sparse"])
        with open(self.new, "wb") as f:
            f.truncate(self.size)
            if self.new_kind == "random":
                for mib in range(self.size >> 20):
                    os.pwrite(f.fileno(), os.urandom(1 << 20), mib << 20)
        self.model = SectorModel(self.tag, initial)
        self.log(f"images: {self.size} bytes, region {self.region_size}, holes at MiB {sorted(holes)}, NEW {self.new_kind}")

    # -- the round --

    def run(self):
        started = time.monotonic()
        self.make_images()
        degraded = self.rng.random() < 0.4
        kills = self.rng.randint(*self.options.kills)
        self.attach_sent = not degraded
        try:
            for index in range(kills):
                self.incarnation(index)
            self.finish(kills)
        except RoundFailure as failure:
            self.failures.append(str(failure))
        finally:
            for process in self.children:
                if process.poll() is None:
                    process.kill()
                process.wait()
            self.log_file.close()
        self.seconds = time.monotonic() - started
        return not self.failures

    def start_run(self, index):
        """Starts daemon run `index` (same bitmap, the target once it was added) at a new copy
        speed, and its writer; returns them and since when the target is attached (or None)."""
        self.pick_speed()
        daemon = Daemon(self, index, self.new if self.attach_sent else "missing")
        self.children.append(daemon.process)
        attached_since = daemon.started if self.attach_sent else None
        writer = WriterRun(self, index, daemon.uri, self.rng)
        self.children.append(writer.process)
        return daemon, writer, attached_since

    def incarnation(self, index):
        """One daemon run that ends with kill -9 at a chosen moment, then the check of both legs."""
        rng = self.rng
        daemon, writer, attached_since = self.start_run(index)
        if not self.attach_sent:
            point = rng.choice(["attach", "after-attach", "degraded", "copy", "save"])
        else:
            point = rng.choices(["copy", "save", "check", "stop", "resume"], weights=[4, 3, 2, 1, 2])[0]
        self.log(f"kill {index}: point {point}, speed-max {self.speed_max}K")
        disturbed = None   # when the daemon was asked to stop: errors after it are expected
        note, state = "", "?"
        if point == "resume":
            time.sleep(rng.uniform(0, 0.3))
        elif point in ("attach", "after-attach", "degraded"):
            time.sleep(rng.uniform(0.1, 1.5))
            state = "degraded"
            if point == "attach":
                watch = BitmapWatch(os.path.dirname(self.bitmap))
                add = self.spawn_cli("add", NAME, self.new)
                self.attach_sent = True
                saw = watch.wait(rng.uniform(0, 0.05))
                watch.close()
                if add.poll() == 0:
                    attached_since = time.monotonic()
                note = "at a bitmap write" if saw else ""
            elif point == "after-attach":
                self.add(daemon)
                attached_since = time.monotonic()
                state = "recovering"
                time.sleep(rng.uniform(0, 0.02))
        else:
            if not self.attach_sent:
                time.sleep(rng.uniform(0.1, 1.0))
                self.add(daemon)
                attached_since = time.monotonic()
            if point == "copy":
                time.sleep(rng.uniform(0.1, 4.0))
                state = self.state_of(daemon)   # the kill follows this status at once
            elif point == "save":
                watch = BitmapWatch(os.path.dirname(self.bitmap))
                time.sleep(rng.uniform(0.1, 2.0))
                state = self.state_of(daemon)
                watch.drain()
                note = "at a bitmap write" if watch.wait(3.0) else "no bitmap write within 3 s"
                watch.close()
            elif point == "check":
                note = self.start_check(daemon)
                state = "in-sync"
            elif point == "stop":
                time.sleep(rng.uniform(0.2, 2.0))
                state = self.state_of(daemon)
                disturbed = time.monotonic()
                self.spawn_cli("stop", NAME)
                time.sleep(rng.uniform(0, 0.2))
        if daemon.exited_by_itself() and point != "stop":
            raise RoundFailure(f"daemon {index} exited by itself (status {daemon.process.returncode}) before the kill:\n{daemon.log_tail()}")
        killed_at = time.monotonic()
        if daemon.alive():
            daemon.kill()
        elif daemon.process.returncode == 0:
            note = "the stop completed before the kill"
        self.kills.append(point)
        self.log(f"killed daemon {index} at {killed_at:.3f} ({point}, state {state}) {note}")
        journal = writer.wait()
        self.account(journal, attached_since, disturbed or killed_at, f"writer {index}")
        before = self.model.diverged
        self.check_legs(f"after kill {index + 1} ({point}, {state}{', ' + note if note else ''})")
        if state == "in-sync":
            # Every region was clean before these writes: only the write intent (invariant 4)
            # can have told the resume to copy them again (checked at the end: NEW == OLD).
            self.diverged_in_sync += self.model.diverged - before

    def state_of(self, daemon):
        status = daemon.status()
        if status is None:
            raise RoundFailure(f"daemon {daemon.index} exited by itself (status {daemon.process.returncode}):\n{daemon.log_tail()}")
        return status["state"]

    def add(self, daemon):
        result = daemon.cli("add", NAME, self.new)
        self.attach_sent = True
        if result.returncode != 0:
            raise RoundFailure(f"add failed: {result.stdout}{result.stderr}")

    def start_check(self, daemon):
        """Lets the copy finish, starts a slow check (or repair) in the background, and returns
        once it runs, after a random part of it."""
        rng = self.rng
        daemon.cli("speed", NAME, "--max", "unlimited")
        daemon.wait_for("in sync before a check", lambda s: s["state"] == "in-sync")
        daemon.cli("speed", NAME, "--max", str(max(1000, int(self.size / 1024 / rng.uniform(2, 5)))))
        repair = rng.random() < 0.5
        self.spawn_cli("check", NAME, "--json", *(["--repair"] if repair else []))
        self.checks += 1
        deadline = time.monotonic() + 60
        while True:
            status = daemon.status()
            if status is None or "check" in status or "lastCheck" in status:
                break
            if time.monotonic() > deadline:
                raise RoundFailure(f"the check did not start within 60 s: {json.dumps(status)}")
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 2.5))
        # What the check found so far, read just before the kill: a repair that is killed would
        # otherwise mend, unseen, legs that a resume left different (a few ms stay unseen).
        status = daemon.status() or {}
        for key in ("check", "lastCheck"):
            found = status.get(key, {}).get("mismatchedSectors", 0)
            if found:
                self.failures.append(f"a {'repair' if repair else 'check'} of the in-sync mirror (before the kill) "
                                     f"found {found} mismatched sectors: {json.dumps(status[key].get('mismatches'))[:600]}")
        return "during a repair" if repair else "during a check"

    def account(self, journal, attached_since, undisturbed_until, who):
        """Adds a writer run to the model, and records the errors it should not have seen."""
        for seq, errno, when in journal.errors_before(undisturbed_until)[:5]:
            self.failures.append(f"{who}: request {seq} failed with errno {errno} while the daemon was up "
                                 f"({undisturbed_until - when:.3f} s before it was killed or stopped)")
        self.failures += [f"{who}: read returned other bytes than written: {line}" for line in journal.read_mismatches[:5]]
        if journal.end is None:
            self.failures.append(f"{who}: the journal has no END line")
        self.model.apply(journal, attached_since)

    def read_legs(self):
        with open(self.old, "rb") as f:
            old = f.read()
        with open(self.new, "rb") as f:
            new = f.read()
        return old, new

    def check_legs(self, when, final=False):
        old, new = self.read_legs()
        self.failures += self.model.check(old, new, when, collapse=not final)
        return old, new

    def finish(self, index):
        """The last run: resume, writes, in sync, check, stop; then both legs checked and compared."""
        rng = self.rng
        daemon, writer, attached_since = self.start_run(index)
        if not self.attach_sent:
            self.add(daemon)
            attached_since = time.monotonic()
        time.sleep(rng.uniform(0.5, 3.0))
        # The copy let loose while the writes go on: copies and writes race at full speed.
        daemon.cli("speed", NAME, "--max", "unlimited")
        daemon.wait_for("in sync", lambda s: s["state"] == "in-sync")
        writer.stop()
        stopped_at = time.monotonic()
        journal = writer.wait()
        self.account(journal, attached_since, stopped_at, f"writer {index} (last run)")
        repair = rng.random() < 0.3
        check = daemon.cli("check", NAME, "--json", *(["--repair"] if repair else []))
        self.checks += 1
        try:
            report = json.loads(check.stdout)
        except ValueError:
            report = None
        if check.returncode not in (0, 3) or report is None:
            self.failures.append(f"check failed: exit {check.returncode}: {check.stdout}{check.stderr}")
        elif report.get("mismatchedSectors", 0) != 0:
            self.failures.append(f"{'repair' if repair else 'check'} of the in-sync mirror found "
                                 f"{report['mismatchedSectors']} mismatched sectors: {json.dumps(report.get('mismatches'))[:600]}")
        stop = daemon.cli("stop", NAME)
        try:
            daemon.process.wait(300)
        except subprocess.TimeoutExpired:
            raise RoundFailure("the daemon did not exit within 300 s of stop")
        if stop.returncode != 0 or "in sync" not in stop.stdout or "not in sync" in stop.stdout:
            self.failures.append(f"stop did not say in sync: exit {stop.returncode}: {stop.stdout.strip()} {stop.stderr.strip()}")
        if daemon.process.returncode != 0:
            self.failures.append(f"the daemon exited with status {daemon.process.returncode} after stop:\n{daemon.log_tail()}")
        old, new = self.check_legs("at the end", final=True)
        if old != new:
            self.failures.append("NEW != OLD at the end: " + self.describe_difference(old, new))

    def describe_difference(self, old, new):
        if len(old) != len(new):
            return f"sizes {len(old)} and {len(new)}"
        differing = [s for s in range(len(old) // SECTOR) if old[s * SECTOR:(s + 1) * SECTOR] != new[s * SECTOR:(s + 1) * SECTOR]]
        regions = sorted({s * SECTOR // self.region_size for s in differing})
        return (f"{len(differing)} sectors differ, first at byte {differing[0] * SECTOR}, in {len(regions)} regions of "
                f"{self.region_size} bytes (first: {regions[:10]})")


def run_rounds(options):
    work = options.work or tempfile.mkdtemp(prefix="bm-crash-torture.", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    totals = {"rounds": 0, "failed": 0, "kills": {}, "acked": 0, "verified": 0, "unknown": 0, "diverged": 0,
              "diverged_in_sync": 0, "bytes": 0, "checks": 0}
    kept = []
    started = time.monotonic()
    master = random.Random(options.seed)
    for number in range(1, options.rounds + 1):
        seed = master.getrandbits(48)
        directory = os.path.join(work, f"round-{number:04d}")
        os.makedirs(directory)
        round_ = Round(options, number, seed, directory)
        ok = round_.run()
        model = round_.model
        totals["rounds"] += 1
        for point in round_.kills:
            totals["kills"][point] = totals["kills"].get(point, 0) + 1
        totals["acked"] += model.acked_changes
        totals["verified"] += len(model.verified)
        totals["unknown"] += model.unknown_changes
        totals["diverged"] += model.diverged
        totals["diverged_in_sync"] += round_.diverged_in_sync
        totals["bytes"] += model.acked_bytes
        totals["checks"] += round_.checks
        line = (f"round {number}/{options.rounds} seed {seed}: region {round_.region_size >> 10}K, "
                f"kills {','.join(round_.kills) or '-'}, {model.acked_changes} acknowledged writes "
                f"({human_bytes(model.acked_bytes)}, {len(model.verified)} found in place), "
                f"{model.unknown_changes} in flight at kills ({model.diverged} sectors on one leg only), "
                f"{round_.seconds:.1f} s: {'ok' if ok else 'FAILED'}")
        if not ok:
            totals["failed"] += 1
            print(line, flush=True)
            for failure in round_.failures:
                print("    " + failure.replace("\n", "\n    "), flush=True)
            if len(kept) < options.max_kept:
                kept.append(directory)
                print(f"    kept: {directory}", flush=True)
            else:
                shutil.rmtree(directory)
        else:
            if not options.quiet:
                print(line, flush=True)
            if not options.keep:
                shutil.rmtree(directory)
    totals["seconds"] = time.monotonic() - started
    totals["kept"] = kept
    print_summary(totals)
    if options.summary_json:
        with open(options.summary_json, "w") as f:
            json.dump(totals, f, indent=2, sort_keys=True)
    if not kept and not options.keep and not options.work:
        shutil.rmtree(work, ignore_errors=True)
    return totals


def print_summary(t):
    kills = sum(t["kills"].values())
    by_point = ", ".join(f"{p} {t['kills'][p]}" for p in KILL_POINTS if p in t["kills"])
    minutes, seconds = divmod(int(t["seconds"]), 60)
    rows = [("rounds", f"{t['rounds']}"),
            ("kill -9", f"{kills} ({by_point})"),
            ("acknowledged writes", f"{t['acked']} (write, write-zeroes, trim; {t['verified']} still in place at a check and found there)"),
            ("in flight at a kill", f"{t['unknown']} (old or new content accepted)"),
            ("on one leg only", f"{t['diverged']} sectors after a kill ({t['diverged_in_sync']} of an in-sync mirror), "
                                "all identical at the end"),
            ("bytes acknowledged", human_bytes(t["bytes"])),
            ("check / repair runs", f"{t['checks']}"),
            ("failed rounds", f"{t['failed']}" + (f" (kept: {', '.join(t['kept'])})" if t["kept"] else "")),
            ("time", f"{minutes} min {seconds} s")]
    print("crash-torture summary")
    for key, value in rows:
        print(f"  {key:<22}{value}")
    print(f"crash-torture: {t['rounds'] - t['failed']} passed, {t['failed']} failed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="the blockmirror executable")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="seed of the rounds' choices (default: random)")
    parser.add_argument("--size", type=parse_size, default=64 << 20, help="image size (a multiple of 1M)")
    parser.add_argument("--kills", default="1-4", help="kills per round: N or MIN-MAX")
    parser.add_argument("--work", help="work directory (default: a new one under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep every round's directory")
    parser.add_argument("--max-kept", type=int, default=3, help="failing rounds whose directory is kept")
    parser.add_argument("--summary-json", help="also write the totals to this file")
    parser.add_argument("--quiet", action="store_true", help="print only failing rounds and the summary")
    options = parser.parse_args()
    low, _, high = options.kills.partition("-")
    options.kills = (int(low), int(high or low))
    if options.size % (1 << 20) or options.size <= 0:
        parser.error("--size must be a positive multiple of 1M")
    if options.seed is None:
        options.seed = random.SystemRandom().getrandbits(32)
    print(f"crash-torture: {options.rounds} rounds of {human_bytes(options.size)}, seed {options.seed}, "
          f"binary {options.bin}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    totals = run_rounds(options)
    sys.exit(1 if totals["failed"] else 0)


if __name__ == "__main__":
    main()
