"""The passthrough benchmark's report: the markdown table of medians (each cell "value (ratio to
raw)"), the goal lines, and the JSON results file. A missed goal is reported, not signalled.
"""
from __future__ import annotations

from .results import Samples, median_min_max, write_json

# workload id -> (column title, direction, metric)
WORKLOADS = {
    "randread4k": ("4k randread QD32 (IOPS)", "read", "iops"),
    "randwrite4k": ("4k randwrite QD32 (IOPS)", "write", "iops"),
    "seqread1m": ("1M read QD32 (MiB/s)", "read", "mibs"),
    "seqwrite1m": ("1M write QD32 (MiB/s)", "write", "mibs"),
}
TARGET_TITLES = {
    "raw": "raw file, fio libaio O_DIRECT (the limit)",
    "blockmirror": "blockmirror serve (passthrough, O_DIRECT)",
    "qemu-nbd": "qemu-nbd --cache=none --aio=native",
    "nbdkit": "nbdkit file cache=none (page cache backed)",
}
# (name, target, workload, threshold, against)
GOALS = [
    ("4k randread vs raw", "blockmirror", "randread4k", 0.85, "raw"),
    ("4k randread vs qemu-nbd", "blockmirror", "randread4k", 2.0, "qemu-nbd"),
    ("1M read vs raw", "blockmirror", "seqread1m", 0.9, "raw"),
]


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    if metric == "iops":
        return f"{value / 1000:.1f}k"
    return f"{value:,.0f}"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


class Table:
    """Samples by (target, workload), their medians and the ratios between targets."""

    def __init__(self, samples: Samples):
        self.samples: dict[tuple[str, str], list[float | None]] = {}
        for (target, workload, _round), value, _done in samples.rows:
            self.samples.setdefault((target, workload), []).append(value)
        targets = list(dict.fromkeys(t for t, _ in self.samples))
        self.targets = [t for t in TARGET_TITLES if t in targets] + [t for t in targets if t not in TARGET_TITLES]
        self.workloads = [w for w in WORKLOADS if any(w == k[1] for k in self.samples)]
        self.medians = {k: median_min_max([v for v in vals if v is not None])[0] for k, vals in self.samples.items()}

    def ratio(self, target: str, workload: str, base: str = "raw") -> float | None:
        v, b = self.medians.get((target, workload)), self.medians.get((base, workload))
        return None if v is None or not b else v / b

    def cell(self, target: str, workload: str) -> str:
        """"median (min–max) ratio-to-raw", the min–max when there were several runs."""
        v, r = self.medians.get((target, workload)), self.ratio(target, workload)
        metric = WORKLOADS[workload][2]
        cell = fmt(v, metric)
        vals = self.samples.get((target, workload), [])
        ok = [x for x in vals if x is not None]
        if v is not None and len(ok) > 1:
            cell += f" ({fmt(min(ok), metric)}–{fmt(max(ok), metric)})"
        if v is not None and r is not None:
            cell += f" {r:.2f}x"
        failed = sum(1 for x in vals if x is None)
        if failed:
            cell += f" [{failed}/{len(vals)} runs failed]"
        return cell

    def print(self, meta: dict) -> None:
        print("| target | " + " | ".join(WORKLOADS[w][0] for w in self.workloads) + " |")
        print("|---|" + "---|" * len(self.workloads))
        for t in self.targets:
            print(f"| {TARGET_TITLES.get(t, t)} | " + " | ".join(self.cell(t, w) for w in self.workloads) + " |")
        print()
        runs = meta.get("repeat")
        print(f"Medians of {runs} run{'s' if runs != 1 else ''} of {meta.get('runtime_s')} s each (min–max), "
              f"image {meta.get('size_bytes', 0) / 1073741824:.2f} GiB; ratio = median / raw median.")

    def goals(self) -> list[dict]:
        out = []
        for name, target, workload, threshold, against in GOALS:
            value = self.ratio(target, workload, base=against)
            status = "n/a" if value is None else ("PASS" if value >= threshold else "MISS")
            out.append({"goal": name, "ratio": value, "threshold": threshold, "against": against, "status": status})
        return out

    def results(self, meta: dict, goals: list[dict]) -> dict:
        return {
            "meta": meta,
            "workloads": {w: {"title": WORKLOADS[w][0], "direction": WORKLOADS[w][1],
                              "unit": "IOPS" if WORKLOADS[w][2] == "iops" else "MiB/s"} for w in self.workloads},
            "targets": {t: {"title": TARGET_TITLES.get(t, t),
                            "results": {w: {"samples": self.samples.get((t, w), []),
                                            "median": self.medians.get((t, w)),
                                            "ratio_to_raw": self.ratio(t, w)} for w in self.workloads}}
                        for t in self.targets},
            "goals": goals,
        }


def print_goals(goals: list[dict]) -> None:
    rr_raw, rr_qemu, sr_raw = goals
    s1, s2 = rr_raw["status"], rr_qemu["status"]
    both = "PASS" if (s1, s2) == ("PASS", "PASS") else ("n/a" if "n/a" in (s1, s2) else "MISS")
    print()
    print("Goals (blockmirror):")
    print(f"- 4k randread >= 0.85x raw and >= 2x qemu-nbd: {both} "
          f"({fmt_ratio(rr_raw['ratio'])} raw [{s1}], {fmt_ratio(rr_qemu['ratio'])} qemu-nbd [{s2}])")
    print(f"- 1M read >= 0.9x raw: {sr_raw['status']} ({fmt_ratio(sr_raw['ratio'])} raw)")


def report(samples: Samples, meta: dict, out_path: str) -> None:
    """Prints the table and the goals; writes everything as JSON to out_path."""
    table = Table(samples)
    table.print(meta)
    goals = table.goals()
    print_goals(goals)
    write_json(out_path, table.results(meta, goals))
