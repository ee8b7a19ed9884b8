#!/usr/bin/env python3
"""Helpers for tools/bench-recovery.sh (recovery time of a mirror: raw copy, qsd, blockmirror).

  bench_recovery.py qsd-mirror --qmp SOCK --out JSON [--start-mirror] [--start EPOCH]
                    [--copy-mode MODE] [--speed BYTES_PER_S] [--timeout S]
      Over qemu-storage-daemon's QMP socket: with --start-mirror, sends blockdev-mirror (job m0,
      device src, target dst, sync full) and takes the time it was sent as the start; then waits
      until the job is ready (BLOCK_JOB_READY event, with query-jobs polled as a fallback) or
      --timeout seconds have passed. Writes {"done", "start", "end", "seconds", "offset", "len"}.
      Without --start-mirror it only waits for the running job (start from --start).

  bench_recovery.py qsd-cancel --qmp SOCK [--timeout S]
      block-job-cancel of the ready job m0 (the target stays a consistent copy, no pivot) and
      waits for BLOCK_JOB_COMPLETED. Exits 1 if the job reported an error.

  bench_recovery.py bm-wait --bin BLOCKMIRROR --name NAME --run-dir DIR --start EPOCH
                    --size BYTES --out JSON [--timeout S]
      Polls `blockmirror status NAME --run-dir DIR --json` until "state" is "in-sync" (exits 1 on
      "target-failed" or if the daemon is gone) or --timeout seconds after --start have passed.
      The poll interval adapts to the copy's progress (0.25 s, down to 0.02 s when the end is
      near) so the status processes cost little CPU. Writes {"done", "start", "end", "seconds",
      "resolution", "polls", "status"}: end is the middle between the last poll that did not
      see in-sync and the first that did, resolution the width of that interval.

  bench_recovery.py window --fio-json JSON --bw-log LOG --start EPOCH --end EPOCH
      Foreground bandwidth of a fio run (written with --write_bw_log, --log_avg_msec,
      --log_unix_epoch=1) within [start, end]: prints {"mibs", "window_s", "total_mibs"}.

  bench_recovery.py copy-time FIO_JSON SIZE
      The raw copy limit: fio's output of two jobs (read OLD, write NEW, SIZE bytes each, run at
      the same time); prints the longer job's runtime in seconds. Exits 1 on an error or a short
      transfer.

  bench_recovery.py verify A B
      Compares two files with O_DIRECT reads (no page cache left behind); prints the first
      differing offset and exits 1 if they differ.

  bench_recovery.py report SAMPLES_TSV META_JSON OUT_JSON
      SAMPLES_TSV has lines "round<TAB>target<TAB>metric<TAB>value" ("-" = failed run, a value
      with a leading ">" = not done within the timeout). Prints the tables (medians, min-max,
      ratios) and writes everything as JSON to OUT_JSON.
"""
import argparse
import json
import mmap
import os
import socket
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # tools/lib must stay as it is in git
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fio import load_fio_json  # noqa: E402  (the same fio JSON reader as bench-passthrough)

JOB = "m0"


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- QMP

class QMPError(Exception):
    pass


class QMP:
    """A minimal QMP client: one command at a time, events kept with the time they arrived."""

    def __init__(self, path, connect_timeout=10.0):
        deadline = time.time() + connect_timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if time.time() > deadline:
                    raise QMPError(f"cannot connect to the QMP socket {path}: {e}")
                time.sleep(0.05)
        self.buf = b""
        self.events = []  # (time, event dict)
        greeting = self._read(timeout=connect_timeout)
        if greeting is None or "QMP" not in greeting:
            raise QMPError(f"no QMP greeting on {path}: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self, timeout):
        """Returns the next message (a dict), or None after timeout seconds."""
        deadline = time.time() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise QMPError("qemu-storage-daemon closed the QMP connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip()
        if not line:
            return self._read(max(0.0, deadline - time.time()))
        return json.loads(line)

    def execute(self, command, arguments=None, timeout=30.0):
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.time() + timeout
        while True:
            reply = self._read(max(0.0, deadline - time.time()))
            if reply is None:
                raise QMPError(f"no reply to {command} within {timeout} s")
            if "event" in reply:
                self.events.append((time.time(), reply))
                continue
            if "error" in reply:
                raise QMPError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def wait_event(self, names, timeout):
        """The first (time, event) among names that arrives within timeout, or None."""
        for i, (t, ev) in enumerate(self.events):
            if ev["event"] in names:
                del self.events[i]
                return t, ev
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            msg = self._read(left)
            if msg is None:
                return None
            if "event" in msg:
                if msg["event"] in names:
                    return time.time(), msg
                self.events.append((time.time(), msg))


def job_info(qmp):
    for job in qmp.execute("query-block-jobs"):
        if job.get("device") == JOB:
            return job
    return None


def cmd_qsd_mirror(a):
    qmp = QMP(a.qmp)
    start = a.start
    if a.start_mirror:
        args = {"job-id": JOB, "device": "src", "target": "dst", "sync": "full", "copy-mode": a.copy_mode}
        if a.speed:
            args["speed"] = a.speed
        start = time.time()
        qmp.execute("blockdev-mirror", args)
    if start is None:
        print("bench_recovery: qsd-mirror needs --start-mirror or --start", file=sys.stderr)
        return 64
    deadline = start + a.timeout
    end, done = None, False
    while True:
        # The event gives the time exactly; query-jobs every 0.5 s catches a job that became
        # ready before this connection existed (--start without --start-mirror).
        got = qmp.wait_event({"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"},
                             min(0.5, max(0.0, deadline - time.time())))
        if got is not None:
            t, ev = got
            if ev["event"] == "BLOCK_JOB_READY":
                end, done = t, True
                break
            print(f"bench_recovery: qsd mirror job: {json.dumps(ev)}", file=sys.stderr)
            return 1
        info = job_info(qmp)
        if info is None:
            print("bench_recovery: qsd has no mirror job m0 any more", file=sys.stderr)
            return 1
        if info.get("ready") or info.get("status") == "ready":
            end, done = time.time(), True
            break
        if time.time() >= deadline:
            end = time.time()
            break
    info = job_info(qmp) or {}
    write_json(a.out, {"done": done, "start": start, "end": end, "seconds": end - start,
                       "offset": info.get("offset"), "len": info.get("len"), "status": info.get("status")})
    return 0


def cmd_qsd_cancel(a):
    qmp = QMP(a.qmp)
    info = job_info(qmp)
    if info is None:
        print("bench_recovery: qsd has no mirror job m0 to cancel", file=sys.stderr)
        return 1
    qmp.execute("block-job-cancel", {"device": JOB})
    got = qmp.wait_event({"BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"}, a.timeout)
    if got is None:
        print(f"bench_recovery: the qsd mirror job did not end within {a.timeout} s of block-job-cancel", file=sys.stderr)
        return 1
    ev = got[1]
    if ev["event"] != "BLOCK_JOB_COMPLETED" or ev["data"].get("error"):
        # A ready job that is cancelled completes (target consistent); anything else is a failure.
        print(f"bench_recovery: qsd mirror job ended with {json.dumps(ev)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- blockmirror status

def bm_status(a):
    """(status dict or None, error text, time the call began, time it returned)."""
    t0 = time.time()
    try:
        p = subprocess.run([a.bin, "status", a.name, "--run-dir", a.run_dir, "--json"],
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None, "blockmirror status took more than 10 s", t0, time.time()
    t1 = time.time()
    if p.returncode != 0:
        return None, (p.stderr.strip() or p.stdout.strip() or f"exit status {p.returncode}"), t0, t1
    try:
        return json.loads(p.stdout), "", t0, t1
    except ValueError:
        return None, f"blockmirror status printed no JSON: {p.stdout.strip()[:200]}", t0, t1


def cmd_bm_wait(a):
    deadline = a.start + a.timeout
    prev_seen = a.start      # the last time the state was seen not in sync
    polls, cost = 0, 0.0
    samples = []             # (time, bytesCopied) for the rate estimate
    last, last_err, errors_since = None, "", 0
    done, end, resolution = False, None, None
    while True:
        st, err, t0, t1 = bm_status(a)
        polls += 1
        cost += t1 - t0
        seen = (t0 + t1) / 2
        if st is None:
            last_err = err
            errors_since += 1
            # The control socket may not exist yet right after the start; give it 30 s.
            if a.pid and not os.path.exists(f"/proc/{a.pid}"):
                print(f"bench_recovery: the blockmirror daemon (pid {a.pid}) is gone; last status error: {err}", file=sys.stderr)
                return 1
            if seen - a.start > 30 and errors_since > 20:
                print(f"bench_recovery: blockmirror status keeps failing: {err}", file=sys.stderr)
                return 1
        else:
            errors_since = 0
            last = st
            state = st.get("state")
            if state == "in-sync":
                done, end, resolution = True, (prev_seen + seen) / 2, seen - prev_seen
                break
            if state in ("target-failed", "stopping"):
                print(f"bench_recovery: blockmirror state is {state}: {json.dumps(st)}", file=sys.stderr)
                return 1
            prev_seen = seen
            if isinstance(st.get("bytesCopied"), (int, float)):
                samples.append((seen, st["bytesCopied"]))
        now = time.time()
        if now >= deadline:
            end = now
            break
        # Next poll: 0.25 s, or sooner when the copy is about to end at the measured rate.
        interval = 0.25
        if last is not None and len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
            total = last.get("regionsTotal") or 0
            dirty = last.get("regionsDirty") or 0
            if rate > 0 and total:
                left = dirty * (last.get("regionSize") or a.size / total) / rate
                interval = min(0.25, max(0.02, left / 3))
        elif st is None:
            interval = 0.05
        time.sleep(max(0.0, min(interval, deadline - time.time())))
    out = {"done": done, "start": a.start, "end": end, "seconds": end - a.start, "resolution": resolution,
           "polls": polls, "poll_cpu_wall_s": cost, "status": last}
    if last is None and last_err:
        out["error"] = last_err
    write_json(a.out, out)
    return 0


# ---------------------------------------------------------------- fio window

def cmd_window(a):
    data = load_fio_json(a.fio_json)
    job = data["jobs"][0]
    if job.get("error", 0):
        print(f"bench_recovery: fio reported error {job['error']} in {a.fio_json}", file=sys.stderr)
        return 1
    w = job["write"]
    total = w["io_bytes"] / 1048576 / (job["job_runtime"] / 1000) if job.get("job_runtime") else None
    entries = []
    with open(a.bw_log) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 3 and parts[2] == "1":  # direction 1 = write
                entries.append((int(parts[0]) / 1000.0, float(parts[1])))  # epoch s, KiB/s
    entries.sort()
    # Entry i is the average over (t[i-1], t[i]]; the first one covers the 0.1 s before it.
    nbytes, covered = 0.0, 0.0
    prev = entries[0][0] - 0.1 if entries else 0.0
    for t, kibs in entries:
        lo, hi = max(prev, a.start), min(t, a.end)
        if hi > lo:
            nbytes += kibs * 1024 * (hi - lo)
            covered += hi - lo
        prev = t
    out = {"mibs": (nbytes / 1048576 / covered) if covered > 0 else None, "window_s": covered,
           "total_mibs": total, "samples": len(entries)}
    print(json.dumps(out))
    return 0 if covered > 0 else 1


# ---------------------------------------------------------------- raw copy limit

def cmd_copy_time(path, size):
    jobs = load_fio_json(path)["jobs"]
    if len(jobs) != 2 or any(j.get("error", 0) for j in jobs):
        print(f"bench_recovery: fio reported an error in {path}", file=sys.stderr)
        return 1
    moved = (jobs[0]["read"]["io_bytes"], jobs[1]["write"]["io_bytes"])
    if moved != (size, size):
        print(f"bench_recovery: fio moved {moved} bytes, not {size} each way", file=sys.stderr)
        return 1
    print(max(j["job_runtime"] for j in jobs) / 1000)
    return 0


# ---------------------------------------------------------------- verify

def cmd_verify(path_a, path_b):
    chunk = 4 << 20
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in (path_a, path_b)]
    bufs = [mmap.mmap(-1, chunk) for _ in fds]  # page-aligned, as O_DIRECT wants
    size = [os.fstat(fd).st_size for fd in fds]
    if size[0] != size[1]:
        print(f"bench_recovery: {path_a} has {size[0]} bytes, {path_b} {size[1]}", file=sys.stderr)
        return 1
    off = 0
    while off < size[0]:
        n = [os.preadv(fd, [buf], off) for fd, buf in zip(fds, bufs)]
        if n[0] != n[1] or n[0] <= 0:
            print(f"bench_recovery: short read at offset {off}", file=sys.stderr)
            return 1
        if bufs[0][:n[0]] != bufs[1][:n[0]]:
            a, b = bufs[0][:n[0]], bufs[1][:n[0]]
            i = next(i for i in range(n[0]) if a[i] != b[i])
            print(f"bench_recovery: {path_a} and {path_b} differ at byte {off + i}", file=sys.stderr)
            return 1
        off += n[0]
    return 0


# ---------------------------------------------------------------- report

TITLES = {
    "raw": "raw",
    "qsd": "qemu-storage-daemon blockdev-mirror",
    "blockmirror": "blockmirror build",
}


def parse(v):
    """'-' -> (None, False); '>12.3' -> (12.3, False: not done); '12.3' -> (12.3, True)."""
    if v == "-":
        return None, False
    if v.startswith(">"):
        return float(v[1:]), False
    return float(v), True


def cmd_report(samples_path, meta_path, out_path):
    with open(meta_path) as f:
        meta = json.load(f)
    raw_samples = {}  # (target, metric) -> [(value, done)]
    with open(samples_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            _rnd, target, metric, value = line.split("\t")
            raw_samples.setdefault((target, metric), []).append(parse(value))

    def stats(target, metric):
        vals = raw_samples.get((target, metric), [])
        ok = [v for v, d in vals if v is not None and d]
        notdone = [v for v, d in vals if v is not None and not d]
        failed = sum(1 for v, _ in vals if v is None)
        return {"samples": [None if v is None else (v if d else f">{v}") for v, d in vals],
                "median": statistics.median(ok) if ok and not notdone else None,
                "min": min(ok) if ok else None, "max": max(ok) if ok else None,
                "not_done": len(notdone), "not_done_after": max(notdone) if notdone else None,
                "failed": failed, "runs": len(vals)}

    size = meta["size_bytes"]
    mib = size / 1048576
    rows = {}

    def fmt_time(s):
        if s["median"] is None:
            if s["not_done"]:
                return f"not done in {s['not_done_after']:.0f} s ({s['not_done']}/{s['runs']} runs)"
            return "n/a" + (f" [{s['failed']}/{s['runs']} failed]" if s["failed"] else "")
        cell = f"{s['median']:.2f} s"
        if s["runs"] > 1:
            cell += f" ({s['min']:.2f}–{s['max']:.2f})"
        if s["failed"]:
            cell += f" [{s['failed']}/{s['runs']} failed]"
        return cell

    def fmt_num(s, unit):
        if s["median"] is None:
            return "n/a" + (f" [{s['failed']}/{s['runs']} failed]" if s["failed"] else "")
        if unit == "IOPS":
            cell = f"{s['median'] / 1000:.1f}k"
            if s["runs"] > 1:
                cell += f" ({s['min'] / 1000:.1f}–{s['max'] / 1000:.1f}k)"
        else:
            cell = f"{s['median']:,.0f}"
            if s["runs"] > 1:
                cell += f" ({s['min']:,.0f}–{s['max']:,.0f})"
        if s["failed"]:
            cell += f" [{s['failed']}/{s['runs']} failed]"
        return cell

    def rate(s):
        return mib / s["median"] if s["median"] else None

    def r(x):
        return "n/a" if x is None else f"{x:.2f}x"

    # The reference is the faster of the two raw copies (by median): a mirror is compared with
    # the best plain copy the disk did in this run.
    raw_rows = [m for m in ("copy_fio_s", "copy_dd_s") if stats("raw", m)["median"] is not None]
    limit_metric = min(raw_rows, key=lambda m: stats("raw", m)["median"]) if raw_rows else "copy_fio_s"
    limit_rate = rate(stats("raw", limit_metric))
    limit_name = {"copy_fio_s": "raw fio read+write", "copy_dd_s": "raw dd copy"}[limit_metric]
    copy_mode = meta.get("qsd_copy_mode")
    bm_args = f" ({meta['blockmirror_args']})" if meta.get("blockmirror_args") else ""
    bm_start = {"add": "build --target missing + add", "build": "build --target NEW"}.get(meta.get("blockmirror_start"), "build")

    print(f"Recovery of {size / 1073741824:.2f} GiB of random data (OLD -> NEW), medians of {meta['repeat']} "
          f"(min–max); rate = size / time; 'vs raw' = rate / rate of the faster raw row, here the "
          f"{limit_name} (higher is better); foreground = fio's MiB/s during the recovery (and in the "
          f"{meta.get('fio_warmup_s')} s before it)")
    print()
    print("| what | time | rate (MiB/s) | vs raw | foreground fio MiB/s (before) |")
    print("|---|---|---|---|---|")
    lines = [
        ("raw, fio: read OLD + write NEW at once (not a copy), 1M QD16 each, libaio O_DIRECT", "raw", "copy_fio_s", None),
        (f"raw, dd copy: iflag=direct oflag=direct bs={meta.get('dd_bs')} (one request at a time)", "raw", "copy_dd_s", None),
        (f"qsd blockdev-mirror ({copy_mode}), idle: until ready", "qsd", "idle_s", None),
        (f"blockmirror {bm_start}{bm_args}, idle: until in-sync", "blockmirror", "idle_s", None),
        (f"qsd, under fio 64k randwrite QD8 through its export", "qsd", "load_s", "load_fg_mibs"),
        (f"blockmirror, under fio 64k randwrite QD8 through its export", "blockmirror", "load_s", "load_fg_mibs"),
    ]
    for title, target, metric, fg in lines:
        s = stats(target, metric)
        if s["runs"] == 0:
            continue
        rows[f"{target}.{metric}"] = s
        rt = rate(s)
        fgs = stats(target, fg) if fg else None
        if fg:
            rows[f"{target}.{fg}"] = fgs
        ratio = rt / limit_rate if rt and limit_rate else None
        extra = ""
        if s["median"] is None and s["not_done"]:
            pct = stats(target, metric.replace("_s", "_pct_at_timeout"))
            crate = stats(target, metric.replace("_s", "_copy_mibs_at_timeout"))
            if pct["median"] is not None:
                extra = f"; {pct['median']:.0f}% copied, {crate['median']:.1f} MiB/s" if crate["median"] is not None else \
                        f"; {pct['median']:.0f}% copied"
        fg_cell = ""
        if fg:
            fg_cell = fmt_num(fgs, "MiB/s")
            pre = stats(target, "load_pre_mibs")
            if pre["median"] is not None:
                fg_cell += f" (before: {pre['median']:,.0f})"
            rows[f"{target}.load_pre_mibs"] = pre
        print(f"| {title} | {fmt_time(s)}{extra} | {'n/a' if rt is None else f'{rt:,.0f}'} | {r(ratio)} | {fg_cell} |")
    print()

    print(f"4k randwrite QD32, fio, {meta['runtime_s']} s runs, medians of {meta['repeat']} (min–max), on the mirror "
          f"once in sync (qsd: job kept in ready state, writes mirrored)")
    print()
    print("| target | IOPS | vs raw |")
    print("|---|---|---|")
    raw4k = stats("raw", "randwrite4k_iops")
    for title, target in [("raw file OLD, fio libaio O_DIRECT (one file: not a mirror)", "raw"),
                          (f"qsd blockdev-mirror ready ({copy_mode}), fio nbd", "qsd"),
                          ("blockmirror in-sync, fio nbd", "blockmirror")]:
        s = stats(target, "randwrite4k_iops")
        if s["runs"] == 0:
            continue
        rows[f"{target}.randwrite4k_iops"] = s
        ratio = s["median"] / raw4k["median"] if s["median"] and raw4k["median"] else None
        print(f"| {title} | {fmt_num(s, 'IOPS')} | {r(ratio)} |")
    print()

    def med(target, metric):
        return stats(target, metric)["median"]

    def div(x, y):
        return x / y if x is not None and y else None

    ratios = {
        "idle recovery rate, blockmirror / qsd": div(med("qsd", "idle_s"), med("blockmirror", "idle_s")),
        f"idle recovery rate, blockmirror / {limit_name}": div(med("raw", limit_metric), med("blockmirror", "idle_s")),
        f"idle recovery rate, qsd / {limit_name}": div(med("raw", limit_metric), med("qsd", "idle_s")),
        "loaded recovery rate, blockmirror / qsd": div(med("qsd", "load_s"), med("blockmirror", "load_s")),
        "foreground MiB/s during recovery, blockmirror / qsd": div(med("blockmirror", "load_fg_mibs"), med("qsd", "load_fg_mibs")),
        "4k randwrite IOPS in sync, blockmirror / qsd": div(med("blockmirror", "randwrite4k_iops"), med("qsd", "randwrite4k_iops")),
    }
    print("Ratios (medians; > 1 means blockmirror is faster):")
    for k, v in ratios.items():
        print(f"- {k}: {r(v)}")
    notes = meta.get("notes") or []
    if notes:
        print()
        for n in notes:
            print(f"Note: {n}")

    write_json(out_path, {"meta": meta, "results": rows, "ratios": ratios,
                          "samples": {f"{t}.{m}": [None if v is None else (v if d else f">{v}") for v, d in vals]
                                      for (t, m), vals in raw_samples.items()}})
    return 0


# ---------------------------------------------------------------- main

def main(argv):
    if len(argv) >= 2 and argv[1] == "verify" and len(argv) == 4:
        return cmd_verify(argv[2], argv[3])
    if len(argv) >= 2 and argv[1] == "copy-time" and len(argv) == 4:
        return cmd_copy_time(argv[2], int(argv[3]))
    if len(argv) >= 2 and argv[1] == "report" and len(argv) == 5:
        return cmd_report(argv[2], argv[3], argv[4])
    p = argparse.ArgumentParser(prog="bench_recovery.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("qsd-mirror")
    q.add_argument("--qmp", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--start-mirror", action="store_true")
    q.add_argument("--start", type=float)
    q.add_argument("--copy-mode", default="write-blocking")
    q.add_argument("--speed", type=int, default=0)
    q.add_argument("--timeout", type=float, default=600)
    c = sub.add_parser("qsd-cancel")
    c.add_argument("--qmp", required=True)
    c.add_argument("--timeout", type=float, default=60)
    b = sub.add_parser("bm-wait")
    b.add_argument("--bin", required=True)
    b.add_argument("--name", required=True)
    b.add_argument("--run-dir", required=True)
    b.add_argument("--start", type=float, required=True)
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--timeout", type=float, default=600)
    b.add_argument("--pid", type=int)
    w = sub.add_parser("window")
    w.add_argument("--fio-json", required=True)
    w.add_argument("--bw-log", required=True)
    w.add_argument("--start", type=float, required=True)
    w.add_argument("--end", type=float, required=True)
    a = p.parse_args(argv[1:])
    try:
        return {"qsd-mirror": cmd_qsd_mirror, "qsd-cancel": cmd_qsd_cancel, "bm-wait": cmd_bm_wait,
                "window": cmd_window}[a.cmd](a)
    except QMPError as e:
        print(f"bench_recovery: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
