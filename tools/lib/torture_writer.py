#!/usr/bin/python3
"""The workload of tools/crash-torture.sh: a real NBD client (libnbd) that writes self-identifying
sectors (torture_blocks.py) through a mirror's export and journals every request.

  torture_writer.py --uri URI --journal FILE --tag TAG --seq-base N --seed S
                    [--connections 2] [--depth 16] [--rate 1500] [--mode steady|bursts]

Many requests in flight on several connections (aio_pwrite, FUA, flush, trim, write-zeroes, and
reads that check what this run wrote); no two requests in flight ever touch the same sector, so
the journal's issue order is the order the sectors changed in. The journal, one line per event:

    C <connection> <t>                                  connected
    I <seq> <W|Z|T|F|R> <sector> <count> <flags> <t>    issued (before it is sent)
    A <seq> <t>                                         acknowledged (success)
    E <seq> <errno> <t>                                 completed with an error
    X <seq> <what>                                      a read returned something else than written
    END <why>

A request with no A line has an unknown outcome (it was in flight when the server died). After
the first error or lost connection nothing new is issued. The writer runs until the server goes
away (exit 0), or until SIGTERM, when it lets the requests in flight complete and disconnects.
Times are CLOCK_MONOTONIC seconds, comparable with the orchestrator's.
"""
import argparse
import collections
import os
import random
import select
import signal
import sys
import time

sys.dont_write_bytecode = True  # tools/lib must stay as it is in git
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402  (Debian's python3-libnbd)
from torture_blocks import SECTOR, ZERO, describe, payload, sector_bytes  # noqa: E402


class JournalWriter:
    def __init__(self, path):
        self.file = open(path, "w", buffering=1 << 20)

    def line(self, *fields):
        self.file.write(" ".join(str(f) for f in fields) + "\n")

    def close(self, why):
        self.line("END", why)
        self.file.close()


class Request:
    __slots__ = ("seq", "op", "sector", "count", "buffer", "connection")

    def __init__(self, seq, op, sector, count, connection, buffer=None):
        self.seq, self.op, self.sector, self.count = seq, op, sector, count
        self.connection, self.buffer = connection, buffer


class Connection:
    def __init__(self, index, uri):
        self.index = index
        self.handle = nbd.NBD()
        self.handle.set_handle_name(f"torture{index}")
        self.handle.connect_uri(uri)
        self.fd = self.handle.aio_get_fd()
        self.in_flight = 0
        self.dead = False


class Writer:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.journal = JournalWriter(args.journal)
        self.seq = args.seq_base
        self.requests = {}            # seq -> Request in flight
        self.known = {}               # sector -> version this run acknowledged (what a read must see)
        self.recent = collections.deque(maxlen=256)  # (sector, count) of acknowledged writes, for reads
        self.stopping = False
        self.failed = False           # an error or a lost connection: issue nothing new
        self.connections = []
        self.sectors = 0
        self.hot = 0

    # -- the requests --

    def choose_range(self, max_sectors):
        """(first sector, count): 4 KiB-aligned mostly, sometimes 512-byte aligned; half of them
        in a hot window of a few hundred KiB that moves now and then, so writes meet the copier."""
        rng = self.rng
        r = rng.random()
        if r < 0.10:
            count = rng.randint(1, 7)
        elif r < 0.50:
            count = 8
        elif r < 0.85:
            count = 8 * rng.randint(2, 16)
        else:
            count = 8 * rng.randint(17, max_sectors // 8)
        if rng.random() < 0.02:
            self.hot = rng.randrange(self.sectors)
        if rng.random() < 0.5:
            first = self.hot + rng.randrange(1024)
        else:
            first = rng.randrange(self.sectors)
        if count % 8 == 0 and rng.random() < 0.85:
            first -= first % 8
        first = min(first, self.sectors - count)
        return max(first, 0), min(count, self.sectors)

    def overlaps(self, first, count):
        end = first + count
        return any(r.count and r.sector < end and first < r.sector + r.count for r in self.requests.values())

    def next_request(self, connection):
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            return self.issue(connection, "F", 0, 0, "-", lambda cb: connection.handle.aio_flush(completion=cb))
        if r < 0.13 and self.recent:
            first, count = self.recent[rng.randrange(len(self.recent))]
            if not all(s in self.known for s in range(first, first + count)) or self.overlaps(first, count):
                return False
            buffer = bytearray(count * SECTOR)
            return self.issue(connection, "R", first, count, "-",
                              lambda cb: connection.handle.aio_pread(buffer, first * SECTOR, completion=cb), buffer)
        first, count = self.choose_range(self.args.max_sectors)
        if self.overlaps(first, count):
            return False
        offset, length = first * SECTOR, count * SECTOR
        h = connection.handle
        if r < 0.18:
            flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0
            return self.issue(connection, "Z", first, count, "nohole" if flags else "-",
                              lambda cb: h.aio_zero(length, offset, completion=cb, flags=flags))
        if r < 0.22:
            return self.issue(connection, "T", first, count, "-", lambda cb: h.aio_trim(length, offset, completion=cb))
        fua = rng.random() < 0.12
        data = bytearray(payload(self.args.tag, first, count, self.seq))
        return self.issue(connection, "W", first, count, "fua" if fua else "-",
                          lambda cb: h.aio_pwrite(data, offset, completion=cb, flags=nbd.CMD_FLAG_FUA if fua else 0), data)

    def issue(self, connection, op, first, count, flags, send, buffer=None):
        seq = self.seq
        self.seq += 1
        request = Request(seq, op, first, count, connection, buffer)
        # Journaled before it is sent: a request the server may have seen is always in the journal.
        self.journal.line("I", seq, op, first, count, flags, f"{time.monotonic():.6f}")
        self.requests[seq] = request
        connection.in_flight += 1
        try:
            send(lambda error: self.completed(request, error.value))
        except nbd.Error as error:
            # Refused before it reached the server (a dead handle): the outcome stays unknown.
            del self.requests[seq]
            connection.in_flight -= 1
            self.lost(connection, f"issue: {error}")
        return True

    def completed(self, request, errno):
        now = f"{time.monotonic():.6f}"
        self.requests.pop(request.seq, None)
        request.connection.in_flight -= 1
        sectors = range(request.sector, request.sector + request.count)
        if errno:
            self.journal.line("E", request.seq, errno, now)
            self.failed = True
            for s in sectors:
                self.known.pop(s, None)
            return 1
        self.journal.line("A", request.seq, now)
        if request.op == "R":
            self.check_read(request)
        elif request.op in "WZT":
            version = request.seq if request.op == "W" else ZERO
            for s in sectors:
                self.known[s] = version
            if request.op == "W":
                self.recent.append((request.sector, request.count))
        return 1

    def check_read(self, request):
        tag, data = self.args.tag, request.buffer
        for i in range(request.count):
            s = request.sector + i
            got = bytes(data[i * SECTOR:(i + 1) * SECTOR])
            if s in self.known and got != sector_bytes(tag, s, self.known[s]):
                self.journal.line("X", request.seq, f"sector {s}: expected version {self.known[s]}, read {describe(tag, s, got)}")
                return

    def lost(self, connection, why):
        if not connection.dead:
            connection.dead = True
            self.failed = True
            self.journal.line("LOST", connection.index, why.replace("\n", " "))

    # -- the loop --

    def run(self):
        args = self.args
        for i in range(args.connections):
            try:
                self.connections.append(Connection(i, args.uri))
            except nbd.Error as error:
                self.journal.close(f"connect failed: {error}".replace("\n", " "))
                return
            self.journal.line("C", i, f"{time.monotonic():.6f}")
        self.sectors = self.connections[0].handle.get_size() // SECTOR
        self.hot = self.rng.randrange(self.sectors)
        interval = 1.0 / args.rate
        next_issue = time.monotonic()
        phase_end, bursting = time.monotonic() + self.rng.uniform(0.1, 1.0), True
        while True:
            now = time.monotonic()
            if args.mode == "bursts" and now >= phase_end:
                bursting = not bursting
                phase_end = now + (self.rng.uniform(0.1, 1.0) if bursting else self.rng.uniform(0.2, 2.5))
            live = [c for c in self.connections if not c.dead]
            issuing = not self.stopping and not self.failed and bursting
            if issuing:
                for c in live:
                    while c.in_flight < args.depth and next_issue <= now and not self.failed:
                        next_issue = max(next_issue + interval, now - 0.1)
                        self.next_request(c)
            if not live or ((self.stopping or self.failed) and not any(c.in_flight for c in live)):
                break
            self.wait(live, 0.05 if issuing else 0.02)
        for c in self.connections:
            if not c.dead:
                try:
                    c.handle.shutdown()
                except nbd.Error:
                    pass
        self.journal.close("stopped" if self.stopping and not self.failed else "connection lost" if self.failed else "done")

    def wait(self, live, timeout):
        readers, writers = [], []
        for c in live:
            direction = c.handle.aio_get_direction()
            if direction & nbd.AIO_DIRECTION_READ:
                readers.append(c.fd)
            if direction & nbd.AIO_DIRECTION_WRITE:
                writers.append(c.fd)
        ready_r, ready_w, _ = select.select(readers, writers, [], timeout)
        for c in live:
            try:
                if c.fd in ready_r:
                    c.handle.aio_notify_read()
                if c.fd in ready_w:
                    c.handle.aio_notify_write()
                if c.handle.aio_is_dead():
                    self.lost(c, "dead")
            except nbd.Error as error:
                self.lost(c, str(error))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--tag", type=int, required=True)
    parser.add_argument("--seq-base", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--depth", type=int, default=16, help="requests in flight per connection")
    parser.add_argument("--rate", type=float, default=1500, help="requests issued per second at most")
    parser.add_argument("--max-sectors", type=int, default=512, help="largest request, in sectors")
    parser.add_argument("--mode", choices=["steady", "bursts"], default="steady")
    args = parser.parse_args()
    writer = Writer(args)
    signal.signal(signal.SIGTERM, lambda *_: setattr(writer, "stopping", True))
    writer.run()


if __name__ == "__main__":
    main()
