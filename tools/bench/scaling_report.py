"""The scaling benchmark's report: per device size and peer, the time to in-sync, blockmirror's
start-up, the daemon's peak and in-sync resident memory and NEW's allocation (medians, min-max),
the runs skipped to keep the disk from filling, the notes, and the JSON results file.
"""
from __future__ import annotations

from .recovery_report import Stats, fmt_time
from .results import Samples, write_json

METRICS = ("sync_s", "startup_s", "rss_peak_kib", "rss_kib", "target_alloc_bytes", "sync_poll_resolution_s")
PEER_TITLES = {"blockmirror": "blockmirror build --target missing + add",
               "qsd": "qsd blockdev-mirror (NEW discard=unmap)"}


def size_label(nbytes: int) -> str:
    """1073741824 -> "1 GiB", 1099511627776 -> "1 TiB", 67108864 -> "64 MiB"."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes} B"


def fmt_mib(s: dict, scale: float) -> str:
    """A median and min-max in MiB (values in units of 1/scale MiB)."""
    if s["median"] is None:
        return "n/a" + (f" [{s['failed']}/{s['runs']} failed]" if s["failed"] else "")
    cell = f"{s['median'] / scale:,.1f}"
    if s["runs"] > 1:
        cell += f" ({s['min'] / scale:,.1f}–{s['max'] / scale:,.1f})"
    return cell


def report(samples: Samples, meta: dict, out_path: str, series: dict | None = None) -> None:
    """Prints the table and the notes; writes everything as JSON to out_path."""
    stats = Stats(samples)
    results: dict[str, dict] = {}
    print(f"Idle recovery of {size_label(meta['data_bytes'])} of random data at each device size (sparse above it); "
          f"medians of {meta['repeat']} (min–max); memory and NEW's allocation at in-sync (qsd: ready)")
    print()
    print("| device size | peer | time to in-sync | start-up | peak RSS (MiB) | RSS at in-sync (MiB) | "
          "NEW allocated (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for label in meta["size_labels"]:
        for target in meta["targets"]:
            row = {m: stats(target, f"{label}.{m}") for m in METRICS}
            if row["sync_s"]["runs"] == 0:
                continue
            results.setdefault(label, {})[target] = row
            startup = fmt_time(row["startup_s"]) if row["startup_s"]["runs"] else "–"
            print(f"| {label} | {PEER_TITLES.get(target, target)} | {fmt_time(row['sync_s'])} | {startup} | "
                  f"{fmt_mib(row['rss_peak_kib'], 1024)} | {fmt_mib(row['rss_kib'], 1024)} | "
                  f"{fmt_mib(row['target_alloc_bytes'], 1 << 20)} |")
    print()
    for why in meta.get("skipped", []):
        print(f"Skipped: {why}")
    for n in meta.get("notes", []):
        print(f"Note: {n}")
    write_json(out_path, {"meta": meta, "results": results, "samples": stats.all_samples(), "series": series or {}})
