"""The QEMU peers: qemu-nbd (a passthrough NBD server, O_DIRECT with native AIO) and
qemu-storage-daemon running blockdev-mirror, driven over its QMP socket.
"""
from __future__ import annotations

import json
import socket
import time

from .procs import Daemon

JOB = "m0"  # qsd's mirror job id


def qemu_nbd(image: str, sock: str, log_path: str, stop_timeout: float) -> Daemon:
    """qemu-nbd --cache=none --aio=native on image (not started); -t keeps it serving after a
    client disconnects (the readiness probe is a client)."""
    return Daemon("qemu-nbd", ["qemu-nbd", "-t", "-f", "raw", "--cache=none", "--aio=native", "-k", sock,
                               "-e", "8", image], log_path=log_path, stop_timeout=stop_timeout)


class QMPError(Exception):
    """The QMP conversation failed, or the mirror job did something else than expected."""


class QMP:
    """A minimal QMP client: one command at a time, events kept with the time they arrived."""

    def __init__(self, path: str, connect_timeout: float = 10.0):
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
        self.events: list[tuple[float, dict]] = []
        greeting = self._read(timeout=connect_timeout)
        if greeting is None or "QMP" not in greeting:
            raise QMPError(f"no QMP greeting on {path}: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def _read(self, timeout: float) -> dict | None:
        """The next message, or None after timeout seconds."""
        deadline = time.time() + timeout
        while True:
            while b"\n" not in self.buf:
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    return None
                except OSError as e:
                    raise QMPError(f"reading from qemu-storage-daemon's QMP socket: {e}")
                if not chunk:
                    raise QMPError("qemu-storage-daemon closed the QMP connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    raise QMPError(f"qemu-storage-daemon sent no JSON: {line[:200]!r}")

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 30.0):
        """Sends a command and returns its "return" (events meanwhile are kept)."""
        msg: dict = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QMPError(f"sending {command} to qemu-storage-daemon: {e}")
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

    def wait_event(self, names: set[str], timeout: float) -> tuple[float, dict] | None:
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


class StorageDaemon:
    """qemu-storage-daemon with OLD (node src, exported writable over NBD) and NEW (node dst),
    both O_DIRECT with native AIO, and a QMP monitor; blockdev-mirror src -> dst runs on it.
    Without new, dst is added later: add_nbd_target (a remote NBD server)."""

    def __init__(self, old: str, new: str | None, nbd_sock: str, qmp_sock: str, log_path: str, stop_timeout: float,
                 target_discard: bool = False):
        """target_discard: NEW's nodes with discard=unmap, so that the mirror's zero writes punch
        holes (without it, qemu zeroes a file with fallocate ZERO_RANGE: the whole target gets
        allocated, seen at 16 GiB sparse)."""
        self.qmp_sock = qmp_sock
        self.uri = f"nbd+unix:///src?socket={nbd_sock}"
        self.stop_timeout = stop_timeout
        self.qmp: QMP | None = None
        discard = ",discard=unmap" if target_discard else ""
        target = ["--blockdev", f"driver=file,node-name=df,filename={new},cache.direct=on,aio=native{discard}",
                  "--blockdev", f"driver=raw,node-name=dst,file=df{discard}"] if new else []
        self.daemon = Daemon("qemu-storage-daemon", [
            "qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=sf,filename={old},cache.direct=on,aio=native",
            "--blockdev", "driver=raw,node-name=src,file=sf",
            *target,
            "--nbd-server", f"addr.type=unix,addr.path={nbd_sock}",
            "--export", "type=nbd,id=e0,node-name=src,writable=on",
            "--chardev", f"socket,path={qmp_sock},server=on,wait=off,id=q0", "--monitor", "chardev=q0",
        ], log_path=log_path, stop_timeout=stop_timeout)

    def _monitor(self) -> QMP:
        if self.qmp is None:
            self.qmp = QMP(self.qmp_sock)
        return self.qmp

    def _job(self) -> dict | None:
        for job in self._monitor().execute("query-block-jobs"):
            if job.get("device") == JOB:
                return job
        return None

    def add_nbd_target(self, host: str, port: int) -> None:
        """blockdev-add of node dst: qemu's NBD client on the export of host:port (TCP), the
        mirror's target (the daemon must have been made without new)."""
        self._monitor().execute("blockdev-add", {"driver": "nbd", "node-name": "dst",
                                                 "server": {"type": "inet", "host": host, "port": str(port)}})

    def start_mirror(self, copy_mode: str, speed: int) -> float:
        """blockdev-mirror (job m0, src -> dst, sync full); returns the time it was sent."""
        args = {"job-id": JOB, "device": "src", "target": "dst", "sync": "full", "copy-mode": copy_mode}
        if speed:
            args["speed"] = speed
        start = time.time()
        self._monitor().execute("blockdev-mirror", args)
        return start

    def wait_ready(self, start: float, timeout: float) -> dict:
        """Waits until the job is ready (BLOCK_JOB_READY, query-block-jobs polled every 0.5 s as
        a fallback) or timeout seconds after start have passed. Returns {"done", "start", "end",
        "seconds", "offset", "len", "status", "progress"}: progress the polls' [seconds since
        start, offset / len], ending with [seconds, 1] when ready."""
        qmp = self._monitor()
        deadline = start + timeout
        done = False
        progress: list[list[float]] = []
        while True:
            got = qmp.wait_event({"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"},
                                 min(0.5, max(0.0, deadline - time.time())))
            if got is not None:
                t, ev = got
                if ev["event"] == "BLOCK_JOB_READY":
                    end, done = t, True
                    break
                raise QMPError(f"qsd mirror job: {json.dumps(ev)}")
            info = self._job()
            if info is None:
                raise QMPError("qsd has no mirror job m0 any more")
            if info.get("ready") or info.get("status") == "ready":
                end, done = time.time(), True
                break
            if info.get("len"):
                progress.append([round(time.time() - start, 3), round(info.get("offset", 0) / info["len"], 5)])
            if time.time() >= deadline:
                end = time.time()
                break
        info = self._job() or {}
        if done:
            progress.append([round(end - start, 3), 1.0])
        return {"done": done, "start": start, "end": end, "seconds": end - start,
                "offset": info.get("offset"), "len": info.get("len"), "status": info.get("status"),
                "progress": progress}

    def cancel(self) -> None:
        """block-job-cancel of the ready job (NEW stays a consistent copy, no pivot); raises
        QMPError unless the job then completes without an error."""
        if self._job() is None:
            raise QMPError("qsd has no mirror job m0 to cancel")
        self._monitor().execute("block-job-cancel", {"device": JOB})
        got = self._monitor().wait_event({"BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"}, self.stop_timeout)
        if got is None:
            raise QMPError(f"the qsd mirror job did not end within {self.stop_timeout:g} s of block-job-cancel")
        ev = got[1]
        if ev["event"] != "BLOCK_JOB_COMPLETED" or ev["data"].get("error"):
            raise QMPError(f"qsd mirror job ended with {json.dumps(ev)}")

    def stop(self) -> int:
        """Closes the monitor and stops the daemon (SIGTERM, SIGKILL); its exit status."""
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        return self.daemon.stop()
