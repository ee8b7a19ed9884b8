"""The recovery benchmark's report: the recovery table (time, rate, ratio to the faster raw copy,
foreground MiB/s under load), the 4k randwrite table, the ratios blockmirror / qsd, the notes,
and the JSON results file.
"""
from __future__ import annotations

from .results import Samples, median_min_max, write_json


def shown(value: float | None, done: bool):
    """A sample as the JSON lists it: the number, None (failed) or ">SECONDS" (not done)."""
    return None if value is None else (value if done else f">{value}")


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


class Stats:
    """Samples by (target, metric) and their summaries: a median only when every run that did
    not fail was done, min-max of the done ones, counts of failed and not-done runs."""

    def __init__(self, samples: Samples):
        self.samples: dict[tuple[str, str], list[tuple[float | None, bool]]] = {}
        for (_round, target, metric), value, done in samples.rows:
            self.samples.setdefault((target, metric), []).append((value, done))

    def __call__(self, target: str, metric: str) -> dict:
        vals = self.samples.get((target, metric), [])
        ok = [v for v, d in vals if v is not None and d]
        notdone = [v for v, d in vals if v is not None and not d]
        median, lo, hi = median_min_max(ok)
        return {"samples": [shown(v, d) for v, d in vals],
                "median": median if not notdone else None, "min": lo, "max": hi,
                "not_done": len(notdone), "not_done_after": max(notdone) if notdone else None,
                "failed": sum(1 for v, _ in vals if v is None), "runs": len(vals)}

    def median(self, target: str, metric: str) -> float | None:
        return self(target, metric)["median"]

    def all_samples(self) -> dict:
        return {f"{t}.{m}": [shown(v, d) for v, d in vals] for (t, m), vals in self.samples.items()}


def failed_suffix(s: dict) -> str:
    return f" [{s['failed']}/{s['runs']} failed]" if s["failed"] else ""


def fmt_time(s: dict) -> str:
    if s["median"] is None:
        if s["not_done"]:
            return f"not done in {s['not_done_after']:.0f} s ({s['not_done']}/{s['runs']} runs)"
        return "n/a" + failed_suffix(s)
    cell = f"{s['median']:.2f} s"
    if s["runs"] > 1:
        cell += f" ({s['min']:.2f}–{s['max']:.2f})"
    return cell + failed_suffix(s)


def fmt_num(s: dict, unit: str) -> str:
    if s["median"] is None:
        return "n/a" + failed_suffix(s)
    if unit == "IOPS":
        cell = f"{s['median'] / 1000:.1f}k"
        if s["runs"] > 1:
            cell += f" ({s['min'] / 1000:.1f}–{s['max'] / 1000:.1f}k)"
    else:
        cell = f"{s['median']:,.0f}"
        if s["runs"] > 1:
            cell += f" ({s['min']:,.0f}–{s['max']:,.0f})"
    return cell + failed_suffix(s)


def div(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


class Report:
    """The tables of one run; rows collects every summary shown, for the JSON."""

    def __init__(self, samples: Samples, meta: dict):
        self.stats, self.meta = Stats(samples), meta
        self.mib = meta["size_bytes"] / 1048576
        self.rows: dict[str, dict] = {}
        # The reference is the faster of the two raw copies (by median): a mirror is compared
        # with the best plain copy the disk did in this run.
        raw_rows = [m for m in ("copy_fio_s", "copy_dd_s") if self.stats.median("raw", m) is not None]
        self.limit_metric = min(raw_rows, key=lambda m: self.stats.median("raw", m)) if raw_rows else "copy_fio_s"
        self.limit_rate = self.rate(self.stats("raw", self.limit_metric))
        self.limit_name = {"copy_fio_s": "raw fio read+write", "copy_dd_s": "raw dd copy"}[self.limit_metric]

    def rate(self, s: dict) -> float | None:
        return self.mib / s["median"] if s["median"] else None

    def recovery_table(self) -> None:
        m = self.meta
        copy_mode = m.get("qsd_copy_mode")
        bm_args = f" ({m['blockmirror_args']})" if m.get("blockmirror_args") else ""
        bm_start = {"add": "build --target missing + add", "build": "build --target NEW"}.get(
            m.get("blockmirror_start"), "build")
        print(f"Recovery of {m['size_bytes'] / 1073741824:.2f} GiB of random data (OLD -> NEW), medians of {m['repeat']} "
              f"(min–max); rate = size / time; 'vs raw' = rate / rate of the faster raw row, here the "
              f"{self.limit_name} (higher is better); foreground = fio's MiB/s during the recovery (and in the "
              f"{m.get('fio_warmup_s')} s before it)")
        print()
        print("| what | time | rate (MiB/s) | vs raw | foreground fio MiB/s (before) |")
        print("|---|---|---|---|---|")
        lines = [
            ("raw, fio: read OLD + write NEW at once (not a copy), 1M QD16 each, libaio O_DIRECT", "raw", "copy_fio_s", None),
            (f"raw, dd copy: iflag=direct oflag=direct bs={m.get('dd_bs')} (one request at a time)", "raw", "copy_dd_s", None),
            (f"qsd blockdev-mirror ({copy_mode}), idle: until ready", "qsd", "idle_s", None),
            (f"blockmirror {bm_start}{bm_args}, idle: until in-sync", "blockmirror", "idle_s", None),
            ("qsd, under fio 64k randwrite QD8 through its export", "qsd", "load_s", "load_fg_mibs"),
            ("blockmirror, under fio 64k randwrite QD8 through its export", "blockmirror", "load_s", "load_fg_mibs"),
        ]
        for title, target, metric, fg in lines:
            s = self.stats(target, metric)
            if s["runs"] == 0:
                continue
            self.rows[f"{target}.{metric}"] = s
            rt = self.rate(s)
            ratio = rt / self.limit_rate if rt and self.limit_rate else None
            print(f"| {title} | {fmt_time(s)}{self.progress(target, metric, s)} | "
                  f"{'n/a' if rt is None else f'{rt:,.0f}'} | {fmt_ratio(ratio)} | {self.foreground(target, fg)} |")
        print()

    def progress(self, target: str, metric: str, s: dict) -> str:
        """How far a recovery that was not done got (percent copied, copy rate)."""
        if s["median"] is not None or not s["not_done"]:
            return ""
        pct = self.stats(target, metric.replace("_s", "_pct_at_timeout"))
        crate = self.stats(target, metric.replace("_s", "_copy_mibs_at_timeout"))
        if pct["median"] is None:
            return ""
        if crate["median"] is not None:
            return f"; {pct['median']:.0f}% copied, {crate['median']:.1f} MiB/s"
        return f"; {pct['median']:.0f}% copied"

    def foreground(self, target: str, fg: str | None) -> str:
        """The load's MiB/s during the recovery (and before it), for the rows under load."""
        if not fg:
            return ""
        fgs = self.stats(target, fg)
        self.rows[f"{target}.{fg}"] = fgs
        cell = fmt_num(fgs, "MiB/s")
        pre = self.stats(target, "load_pre_mibs")
        if pre["median"] is not None:
            cell += f" (before: {pre['median']:,.0f})"
        self.rows[f"{target}.load_pre_mibs"] = pre
        return cell

    def randwrite_table(self) -> None:
        m = self.meta
        copy_mode = m.get("qsd_copy_mode")
        print(f"4k randwrite QD32, fio, {m['runtime_s']} s runs, medians of {m['repeat']} (min–max), on the mirror "
              f"once in sync (qsd: job kept in ready state, writes mirrored)")
        print()
        print("| target | IOPS | vs raw, one file | vs raw, the slower of two files written at once |")
        print("|---|---|---|---|")
        raw4k, pair = self.stats("raw", "randwrite4k_iops"), self.stats("raw", "randwrite4k_pair_iops")
        for title, target, metric in [
                ("raw file OLD, fio libaio O_DIRECT (one file: not a mirror)", "raw", "randwrite4k_iops"),
                ("raw OLD and NEW at once, two fio libaio jobs: the slower one (a mirror's limit on one disk)", "raw",
                 "randwrite4k_pair_iops"),
                (f"qsd blockdev-mirror ready ({copy_mode}), fio nbd", "qsd", "randwrite4k_iops"),
                ("blockmirror in-sync, fio nbd", "blockmirror", "randwrite4k_iops")]:
            s = self.stats(target, metric)
            if s["runs"] == 0:
                continue
            self.rows[f"{target}.{metric}"] = s
            ratios = [s["median"] / ref["median"] if s["median"] and ref["median"] else None for ref in (raw4k, pair)]
            print(f"| {title} | {fmt_num(s, 'IOPS')} | {' | '.join(fmt_ratio(r) for r in ratios)} |")
        print()
        print("Both legs of each mirror are files on the same disk, so a mirrored write costs that disk two writes: "
              "the second raw row is what each leg gets when both are written at once.")
        print()

    def ratios(self) -> dict:
        med, lim = self.stats.median, self.limit_metric
        return {
            "idle recovery rate, blockmirror / qsd": div(med("qsd", "idle_s"), med("blockmirror", "idle_s")),
            f"idle recovery rate, blockmirror / {self.limit_name}": div(med("raw", lim), med("blockmirror", "idle_s")),
            f"idle recovery rate, qsd / {self.limit_name}": div(med("raw", lim), med("qsd", "idle_s")),
            "loaded recovery rate, blockmirror / qsd": div(med("qsd", "load_s"), med("blockmirror", "load_s")),
            "foreground MiB/s during recovery, blockmirror / qsd": div(med("blockmirror", "load_fg_mibs"),
                                                                       med("qsd", "load_fg_mibs")),
            "4k randwrite IOPS in sync, blockmirror / qsd": div(med("blockmirror", "randwrite4k_iops"),
                                                                med("qsd", "randwrite4k_iops")),
            "4k randwrite IOPS in sync, blockmirror / the slower leg of two raw files written at once":
                div(med("blockmirror", "randwrite4k_iops"), med("raw", "randwrite4k_pair_iops")),
        }


def print_ratios(heading: str, ratios: dict, notes: list[str] | None) -> None:
    """The ratios under their heading, then the notes (the end of a report)."""
    print(heading)
    for k, v in ratios.items():
        print(f"- {k}: {fmt_ratio(v)}")
    if notes:
        print()
        for n in notes:
            print(f"Note: {n}")


def report(samples: Samples, meta: dict, out_path: str, series: dict | None = None) -> None:
    """Prints the tables, the ratios and the notes; writes everything as JSON to out_path, with
    the time series of the runs (target -> kind -> [{"round", "points"}]: each recovery's
    progress, the load's MiB/s) for the plots."""
    r = Report(samples, meta)
    r.recovery_table()
    r.randwrite_table()
    ratios = r.ratios()
    print_ratios("Ratios (medians; > 1 means blockmirror is faster):", ratios, meta.get("notes"))
    write_json(out_path, {"meta": meta, "results": r.rows, "ratios": ratios, "samples": r.stats.all_samples(),
                          "series": series or {}})
