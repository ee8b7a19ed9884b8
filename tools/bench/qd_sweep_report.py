"""The QD sweep's report: per workload, a table of IOPS per queue depth and target (median,
min-max, ratio to raw from the same run) and one of the median latencies (p50 clat and lat),
and the JSON results file the plots read.
"""
from __future__ import annotations

from .passthrough_report import TARGET_TITLES
from .results import Samples, median_min_max, write_json

# workload id -> (title, fio --rw, direction)
WORKLOADS = {
    "randread4k": ("4k randread", "randread", "read"),
    "randwrite4k": ("4k randwrite", "randwrite", "write"),
}
FIELDS = ("iops", "clat_p50_us", "lat_p50_us", "slat_mean_us")  # fio.latency's, sampled per run


def summary(values: list[float | None]) -> dict:
    ok = [v for v in values if v is not None]
    median, lo, hi = median_min_max(ok)
    return {"samples": values, "median": median, "min": lo, "max": hi, "failed": len(values) - len(ok)}


class Sweep:
    """Samples by (workload, QD, target, field) and their summaries."""

    def __init__(self, samples: Samples, meta: dict):
        self.meta = meta
        self.values: dict[tuple[str, int, str, str], list[float | None]] = {}
        for (workload, qd, target, field, _rnd), value, _done in samples.rows:
            self.values.setdefault((workload, int(qd), target, field), []).append(value)
        self.qds = meta["qds"]
        targets = list(dict.fromkeys(k[2] for k in self.values))
        self.targets = [t for t in TARGET_TITLES if t in targets] + [t for t in targets if t not in TARGET_TITLES]
        self.workloads = [w for w in WORKLOADS if any(k[0] == w for k in self.values)]

    def stat(self, workload: str, qd: int, target: str, field: str) -> dict:
        return summary(self.values.get((workload, qd, target, field), []))

    def ratio(self, workload: str, qd: int, target: str) -> float | None:
        v, raw = self.stat(workload, qd, target, "iops")["median"], self.stat(workload, qd, "raw", "iops")["median"]
        return v / raw if v is not None and raw else None

    def iops_cell(self, workload: str, qd: int, target: str) -> str:
        st = self.stat(workload, qd, target, "iops")
        if st["median"] is None:
            return "n/a"
        cell = f"{st['median'] / 1000:.1f}k"
        if len(st["samples"]) > 1:
            cell += f" ({st['min'] / 1000:.1f}–{st['max'] / 1000:.1f}k)"
        r = self.ratio(workload, qd, target)
        if target != "raw" and r is not None:
            cell += f" {r:.2f}x"
        if st["failed"]:
            cell += f" [{st['failed']}/{len(st['samples'])} failed]"
        return cell

    def latency_cell(self, workload: str, qd: int, target: str) -> str:
        clat, lat = (self.stat(workload, qd, target, f)["median"] for f in ("clat_p50_us", "lat_p50_us"))
        if clat is None or lat is None:
            return "n/a"
        return f"{clat:,.0f} / {lat:,.0f}"

    def print(self) -> None:
        m = self.meta
        runs = m.get("repeat")
        for w in self.workloads:
            title = WORKLOADS[w][0]
            print(f"{title}, IOPS by queue depth: medians of {runs} run{'s' if runs != 1 else ''} of "
                  f"{m.get('runtime_s')} s (min–max), ratio to raw's median in the same run")
            print()
            print("| QD | " + " | ".join(TARGET_TITLES.get(t, t) for t in self.targets) + " |")
            print("|---|" + "---|" * len(self.targets))
            for qd in self.qds:
                print(f"| {qd} | " + " | ".join(self.iops_cell(w, qd, t) for t in self.targets) + " |")
            print()
            print(f"{title}, median latency by queue depth: fio's p50 clat / p50 lat (µs); raw libaio's clat "
                  "leaves out io_submit (in slat), through NBD the client's clat includes the server's submit: "
                  "compare lat")
            print()
            print("| QD | " + " | ".join(self.targets) + " |")
            print("|---|" + "---|" * len(self.targets))
            for qd in self.qds:
                print(f"| {qd} | " + " | ".join(self.latency_cell(w, qd, t) for t in self.targets) + " |")
            print()
        print(f"Image {m.get('size_bytes', 0) / 1073741824:.2f} GiB of random data; a fresh server for every run.")

    def results(self) -> dict:
        return {
            "meta": self.meta,
            "qds": self.qds,
            "workloads": {w: {"title": WORKLOADS[w][0], "direction": WORKLOADS[w][2]} for w in self.workloads},
            "targets": {t: TARGET_TITLES.get(t, t) for t in self.targets},
            "results": {w: {t: {str(qd): dict({f: self.stat(w, qd, t, f) for f in FIELDS},
                                              iops_ratio_to_raw=self.ratio(w, qd, t))
                                for qd in self.qds}
                            for t in self.targets}
                        for w in self.workloads},
        }


def report(samples: Samples, meta: dict, out_path: str) -> None:
    """Prints the tables; writes everything as JSON to out_path."""
    sweep = Sweep(samples, meta)
    sweep.print()
    write_json(out_path, sweep.results())
