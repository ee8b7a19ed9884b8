"""What every sector of a torture round may hold, from the writers' journals (torture_writer.py).

A sector's acceptable versions: after an acknowledged write exactly that write (after an
acknowledged trim or write-zeroes: zeroes, since this server punches holes or zeroes; a trim that
left data behind is reported); a request that was in flight when the daemon died adds its version
to the set (either the old or the new content is fine). Requests are applied in issue order, which
is the order the sectors changed in: the writer never has two requests on one sector in flight.

A sector is *tracked* on the target when its last acknowledged change was issued after the target
was attached: the write was acknowledged only after it completed on both legs, so NEW must hold an
acceptable version there too, at any kill.

After each kill the image files are read and checked; the state then collapses to what OLD holds
(the source is the truth from then on) and a sector stays tracked only where NEW equals OLD.
"""
from array import array

from torture_blocks import SECTOR, ZERO, GARBAGE, describe, version_name, version_of

MAX_REPORTED = 20   # runs of bad sectors described per check


class Journal:
    """One writer run's journal, parsed."""

    def __init__(self, path):
        self.path = path
        self.issued = []           # (seq, op, sector, count, flags, t) in issue order
        self.acked = {}            # seq -> t
        self.errors = {}           # seq -> (errno, t)
        self.read_mismatches = []  # lines
        self.end = None
        self.lost = []
        with open(path) as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                kind = fields[0]
                if kind == "I":
                    self.issued.append((int(fields[1]), fields[2], int(fields[3]), int(fields[4]), fields[5], float(fields[6])))
                elif kind == "A":
                    self.acked[int(fields[1])] = float(fields[2])
                elif kind == "E":
                    self.errors[int(fields[1])] = (int(fields[2]), float(fields[3]))
                elif kind == "X":
                    self.read_mismatches.append(line.strip())
                elif kind == "LOST":
                    self.lost.append(line.strip())
                elif kind == "END":
                    self.end = " ".join(fields[1:])

    def errors_before(self, t):
        """Requests that failed while the daemon was up and undisturbed (before `t`)."""
        return [(seq, errno, when) for seq, (errno, when) in self.errors.items() if when < t]


class SectorModel:
    def __init__(self, tag, initial_versions):
        self.tag = tag
        self.sectors = len(initial_versions)
        self.state = list(initial_versions)     # an int (one version) or a tuple of acceptable ones
        self.owner = array("q", bytes(8 * self.sectors))  # seq of the last acknowledged change (0: none)
        self.tracked = bytearray(self.sectors)  # 1: NEW must hold an acceptable version
        self.verified = set()                   # acknowledged changes found in place at a check
        self.acked_changes = 0
        self.acked_bytes = 0
        self.unknown_changes = 0
        self.diverged = 0                       # sectors a kill left different on the legs (in flight, one leg)

    def apply(self, journal, attached_since):
        """Applies one writer run. `attached_since`: monotonic time from which the target was
        attached (None: not attached during the run)."""
        for seq, op, first, count, _flags, issued_at in journal.issued:
            if op not in "WZT":
                continue
            version = seq if op == "W" else ZERO
            sectors = range(first, first + count)
            if seq in journal.acked:
                self.acked_changes += 1
                self.acked_bytes += count * SECTOR
                tracked = 1 if attached_since is not None and issued_at >= attached_since else 0
                for s in sectors:
                    self.state[s] = version
                    self.owner[s] = seq
                    self.tracked[s] = tracked
            else:
                self.unknown_changes += 1
                for s in sectors:
                    current = self.state[s]
                    acceptable = current if isinstance(current, tuple) else (current,)
                    if version not in acceptable:
                        self.state[s] = acceptable + (version,)

    def acceptable(self, s):
        current = self.state[s]
        return current if isinstance(current, tuple) else (current,)

    def check(self, old, new, when, collapse=True):
        """Checks the bytes of OLD (every sector) and NEW (tracked sectors) against the model.
        Returns failure lines (runs of consecutive bad sectors, one line each); then, unless
        `collapse` is false, collapses the model to OLD's content."""
        tag = self.tag
        bad = {"OLD": [], "NEW": []}     # sectors that hold no acceptable version, per leg
        old_versions = array("q", bytes(8 * self.sectors))
        for s in range(self.sectors):
            got = version_of(tag, s, old[s * SECTOR:(s + 1) * SECTOR])
            old_versions[s] = got
            ok = self.acceptable(s)
            if got not in ok:
                bad["OLD"].append(s)
            elif len(ok) == 1 and self.owner[s]:
                self.verified.add(self.owner[s])
        for s in range(self.sectors):
            if not self.tracked[s]:
                continue
            got = version_of(tag, s, new[s * SECTOR:(s + 1) * SECTOR])
            ok = self.acceptable(s)
            if got not in ok:
                bad["NEW"].append(s)
            elif got != old_versions[s]:
                # Legal only for a request in flight at the kill that reached one leg: the resume
                # must copy the region again (the write-intent bitmap's job, invariant 4).
                self.diverged += len(ok) > 1
                self.tracked[s] = 0
        failures = []
        for leg, sectors in bad.items():
            data = old if leg == "OLD" else new
            why = "" if leg == "OLD" else " (acknowledged on both legs)"
            for first, count in runs(sectors):
                expected = " or ".join(version_name(v) for v in self.acceptable(first))
                failures.append(f"{when}: {leg} sectors {first}-{first + count - 1} (bytes {first * SECTOR}+{count * SECTOR}): "
                                f"the first holds {describe(tag, first, data[first * SECTOR:(first + 1) * SECTOR])}, "
                                f"expected {expected}{why}")
        if len(failures) > MAX_REPORTED:
            failures = failures[:MAX_REPORTED] + [f"{when}: ... and {len(failures) - MAX_REPORTED} more runs of bad sectors"]
        if collapse:
            for s in range(self.sectors):
                if old_versions[s] != GARBAGE:
                    self.state[s] = old_versions[s]
        return failures


def runs(sectors):
    """(first, count) of each run of consecutive numbers in the sorted list `sectors`."""
    result = []
    for s in sectors:
        if result and result[-1][0] + result[-1][1] == s:
            result[-1][1] += 1
        else:
            result.append([s, 1])
    return [tuple(r) for r in result]
