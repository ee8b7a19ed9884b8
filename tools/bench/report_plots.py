"""The report's PNG plots, drawn with matplotlib from the JSON files of a report folder:
  passthrough.png         median IOPS / MiB/s per target and workload (bars: min-max)
  qd-iops.png             IOPS per target per queue depth, 4k randread and randwrite
  qd-latency.png          p50 latency per target per queue depth (raw: lat and clat)
  recovery-progress.png   share copied over time: blockmirror and qsd idle and under load; in
                          the VM md, blockmirror --backend md and the engine (through fio's nbd
                          engine and through /dev/nbd0)
  recovery-foreground.png the load's MiB/s over time during the recovery, blockmirror and qsd
  scaling.png             time to in-sync, peak RSS and NEW's allocation against device size
Every line is the median of the runs, its band (or bars) their min-max. A plot whose JSON is
missing is left out. Run as `python3 -m bench.report_plots DIR` from tools/ by an interpreter
that has matplotlib (report.py picks it); prints the names of the files written.
"""
from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from .scaling_report import size_label  # noqa: E402
from .series import band, grid_step, progress_at, rate_at  # noqa: E402

COLORS = {"raw": "#555555", "blockmirror": "#1f77b4", "qemu-nbd": "#ff7f0e", "nbdkit": "#2ca02c", "qsd": "#d62728",
          "md": "#9467bd", "md-blockmirror": "#8c564b", "engine": "#1f77b4", "engine-nbd": "#17becf"}
LABELS = {"raw": "raw (fio libaio)", "blockmirror": "blockmirror", "qemu-nbd": "qemu-nbd", "nbdkit": "nbdkit",
          "qsd": "qsd blockdev-mirror", "md": "kernel md (mdadm)", "md-blockmirror": "blockmirror --backend md",
          "engine": "blockmirror engine", "engine-nbd": "blockmirror engine via /dev/nbd0"}
DPI = 100


def load(folder: str, name: str) -> dict | None:
    try:
        with open(os.path.join(folder, f"{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def runs_note(n: int | None) -> str:
    return f"median of {n} run{'s' if n != 1 else ''}, bars/band: min–max" if n else "median, bars/band: min–max"


def save(fig, folder: str, name: str, written: list[str]) -> None:
    fig.tight_layout()
    fig.savefig(os.path.join(folder, name), dpi=DPI)
    plt.close(fig)
    written.append(name)


def errorbar(ax, xs, stats: list[dict], scale: float, target: str, **kw) -> float:
    """Medians with min-max bars (points without a median left out); returns the largest max."""
    pts = [(x, s) for x, s in zip(xs, stats) if s and s.get("median") is not None]
    if not pts:
        return 0.0
    x = [p[0] for p in pts]
    med = [p[1]["median"] / scale for p in pts]
    lo = [m - p[1]["min"] / scale for m, p in zip(med, pts)]
    hi = [p[1]["max"] / scale - m for m, p in zip(med, pts)]
    ax.errorbar(x, med, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=COLORS.get(target),
                label=kw.pop("label", LABELS.get(target, target)), **kw)
    return max(p[1]["max"] / scale for p in pts)


def passthrough(folder: str, written: list[str]) -> None:
    data = load(folder, "passthrough")
    if not data:
        return
    workloads, targets = data["workloads"], list(data["targets"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(3 * len(workloads), 3.6), squeeze=False)
    for ax, (w, info) in zip(axes[0], workloads.items()):
        for i, t in enumerate(targets):
            samples = [v for v in data["targets"][t]["results"][w]["samples"] if v is not None]
            if not samples:
                continue
            med = data["targets"][t]["results"][w]["median"]
            ax.bar(i, med, color=COLORS.get(t), yerr=[[med - min(samples)], [max(samples) - med]], capsize=3)
        ax.set_xticks(range(len(targets)), [LABELS.get(t, t).split(" (")[0] for t in targets], rotation=30,
                      ha="right", fontsize=8)
        ax.set_title(info["title"], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Passthrough: blockmirror serve vs raw and peers ({runs_note(data['meta'].get('repeat'))})",
                 fontsize=10)
    save(fig, folder, "passthrough.png", written)


def qd_sweep(folder: str, written: list[str]) -> None:
    data = load(folder, "qd-sweep")
    if not data:
        return
    qds, n = data["qds"], data["meta"].get("repeat")
    for name, title in (("qd-iops.png", "IOPS"), ("qd-latency.png", "p50 latency (µs)")):
        fig, axes = plt.subplots(1, len(data["workloads"]), figsize=(10, 4), squeeze=False)
        for ax, (w, info) in zip(axes[0], data["workloads"].items()):
            for t, by_qd in data["results"][w].items():
                if name == "qd-iops.png":
                    errorbar(ax, qds, [by_qd[str(q)]["iops"] for q in qds], 1000, t)
                else:
                    errorbar(ax, qds, [by_qd[str(q)]["lat_p50_us"] for q in qds], 1, t,
                             label=f"{LABELS.get(t, t)} (lat)")
                    if t == "raw":
                        errorbar(ax, qds, [by_qd[str(q)]["clat_p50_us"] for q in qds], 1, t, linestyle="--",
                                 label="raw clat (no io_submit)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(qds, [str(q) for q in qds])
            ax.set_xlabel("queue depth")
            ax.set_ylabel("IOPS (thousands)" if name == "qd-iops.png" else "p50 latency (µs)")
            if name == "qd-latency.png":
                ax.set_yscale("log")
            ax.set_title(info["title"], fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{title} by queue depth, 4k random ({runs_note(n)})", fontsize=10)
        save(fig, folder, name, written)


def progress_panel(ax, runs_by_peer: dict[str, list[list[list[float]]]], title: str) -> bool:
    """Median and min-max of the share copied over time, one line per peer; False if empty."""
    end = max((p[-1][0] for runs in runs_by_peer.values() for p in runs if p), default=0)
    if end <= 0:
        return False
    step = grid_step(end)
    for peer, runs in runs_by_peer.items():
        pts = band([progress_at(p) for p in runs if p], 0, end, step)
        if not pts:
            continue
        t, med, lo, hi = zip(*pts)
        ax.plot(t, [100 * v for v in med], color=COLORS.get(peer), label=f"{LABELS.get(peer, peer)} (n={len(runs)})")
        ax.fill_between(t, [100 * v for v in lo], [100 * v for v in hi], color=COLORS.get(peer), alpha=0.2)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("seconds since the recovery started")
    ax.set_ylabel("copied (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return True


def recovery(folder: str, written: list[str]) -> None:
    rec, vm = load(folder, "recovery"), load(folder, "md-vm")
    panels = []
    if rec:
        size = size_label(rec["meta"]["size_bytes"])
        for kind, what in (("idle_progress", "idle"), ("load_progress", "under fio 64k randwrite QD8")):
            runs = {t: [r["points"] for r in k.get(kind, [])] for t, k in rec.get("series", {}).items()}
            panels.append(({t: r for t, r in runs.items() if r}, f"{what}, {size} (host)"))
    if vm and vm["meta"].get("progress", True):  # PROGRESS=0: each run's end alone, no line to draw
        runs: dict[str, list] = {}
        for r in vm["runs"]:
            if r["result"].get("PROGRESS"):
                runs.setdefault(r["result"].get("SCENARIO", "?"), []).append(r["result"]["PROGRESS"])
        panels.append((runs, f"under fio {vm['meta'].get('fio_bs', '64k')} randwrite QD{vm['meta'].get('fio_qd', 8)}, "
                             f"{size_label(vm['meta']['size_bytes'])}, in a qemu TCG VM"))
    panels = [p for p in panels if p[0]]
    if not panels:
        return
    # at least 7 inches wide: one panel alone (MEASURES=md-vm) has the title's width too
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.2 * len(panels), 7), 3.8), squeeze=False)
    for ax, (runs, title) in zip(axes[0], panels):
        progress_panel(ax, runs, title)
    fig.suptitle("Recovery progress over time (median, band: min–max of the runs)", fontsize=10)
    save(fig, folder, "recovery-progress.png", written)


def foreground(folder: str, written: list[str]) -> None:
    rec = load(folder, "recovery")
    if not rec:
        return
    runs = {t: [r["points"] for r in k.get("load_foreground", [])] for t, k in rec.get("series", {}).items()}
    runs = {t: r for t, r in runs.items() if r}
    if not runs:
        return
    start = min(p[0][0] for rs in runs.values() for p in rs if p)
    end = max(p[-1][0] for rs in runs.values() for p in rs if p)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    step = grid_step(end - start)
    for t, rs in runs.items():
        pts = band([rate_at(p) for p in rs if p], start, end, step)
        if not pts:
            continue
        x, med, lo, hi = zip(*pts)
        ax.plot(x, med, color=COLORS.get(t), label=f"{LABELS.get(t, t)} (n={len(rs)})", lw=1)
        ax.fill_between(x, lo, hi, color=COLORS.get(t), alpha=0.2)
        done = rec.get("results", {}).get(f"{t}.load_s", {}).get("median")
        if done:
            ax.axvline(done, color=COLORS.get(t), ls=":", lw=1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("seconds since the recovery started (before 0: the load alone; dotted: median end of the recovery)")
    ax.set_ylabel("fio 64k randwrite QD8 (MiB/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Foreground MiB/s during the recovery, {size_label(rec['meta']['size_bytes'])} "
                 f"(fio's 100 ms bandwidth log; median, band: min–max)", fontsize=10)
    save(fig, folder, "recovery-foreground.png", written)


def scaling(folder: str, written: list[str]) -> None:
    data = load(folder, "scaling")
    if not data or not data.get("results"):
        return
    sizes, labels = data["meta"]["sizes"], data["meta"]["size_labels"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    panels = (("sync_s", 1, "time to in-sync (s)"), ("rss_peak_kib", 1024, "peak RSS, VmHWM (MiB)"),
              ("target_alloc_bytes", 1 << 20, "NEW allocated (MiB)"))
    for ax, (metric, scale, ylabel) in zip(axes, panels):
        top = 0.0
        for t in data["meta"]["targets"]:
            stats = [data["results"].get(lab, {}).get(t, {}).get(metric) for lab in labels]
            top = max(top, errorbar(ax, sizes, stats, scale, t))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, labels)
        ax.set_xlabel("device size")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, top * 1.15 or 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Scaling: the same {size_label(data['meta']['data_bytes'])} of data at every size, sparse above it "
                 f"({runs_note(data['meta'].get('repeat'))})", fontsize=10)
    save(fig, folder, "scaling.png", written)


def main(folder: str) -> int:
    written: list[str] = []
    for plot in (passthrough, qd_sweep, recovery, foreground, scaling):
        plot(folder, written)
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
