"""REPORT.md of a report folder: how it was made (command, commit, binary), the machine named,
headline ratios taken from each measure's JSON (always between peers of the same run), the
plots, each measure's own printed report (NAME.md) and the table of the md VM, and the list of
runs with their exit status and time.
"""
from __future__ import annotations

import json
import os

TITLES = {"passthrough": "Passthrough: blockmirror serve vs raw, qemu-nbd, nbdkit",
          "qd-sweep": "Queue-depth sweep: IOPS and p50 latency per QD",
          "recovery": "Recovery: idle, under load, and the in-sync mirror",
          "crash-cost": "Crash cost: regions copied again after kill -9",
          "scaling": "Scaling: 1 GiB, 16 GiB sparse, 1 TiB sparse",
          "md-vm": "Kernel md in a qemu VM, side by side"}
PLOT_TITLES = {"passthrough.png": "Passthrough IOPS and MiB/s per target",
               "qd-iops.png": "IOPS per target per queue depth",
               "qd-latency.png": "p50 latency per target per queue depth",
               "recovery-progress.png": "Recovery progress over time: blockmirror, qsd, md, the engine in the VM",
               "recovery-foreground.png": "Foreground MiB/s during the recovery",
               "scaling.png": "Time to in-sync, RSS and NEW's allocation against device size"}


def _load(folder: str, name: str) -> dict | None:
    try:
        with open(os.path.join(folder, f"{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def machine(meta: dict) -> list[str]:
    """The machine and the files, from a measure's meta."""
    mem = meta.get("memory_kib")
    disk = meta.get("workdir_rotational")
    kind = {True: "rotational (or a virtual disk that says so)", False: "non-rotational", None: "unknown kind"}[disk]
    return [f"- CPU: {meta.get('cpu_model') or '?'}, {meta.get('cpus')} cores; memory "
            f"{mem / 1048576:.1f} GiB" if mem else f"- CPU: {meta.get('cpu_model') or '?'}, {meta.get('cpus')} cores",
            f"- kernel {meta.get('kernel')}; virtualization: {meta.get('virtualization') or 'none'}",
            f"- files on {meta.get('workdir_device') or '?'} ({meta.get('workdir_fs')}, {kind})"]


def headlines(folder: str) -> list[str]:
    """A few ratios of each measure, each from that measure's own run."""
    out = []
    pt = _load(folder, "passthrough")
    if pt:
        t = pt["targets"]

        def med(target: str, w: str) -> float | None:
            return t.get(target, {}).get("results", {}).get(w, {}).get("median")

        parts = [f"{info['title']}: {_x(_div(med('blockmirror', w), med('raw', w)))} raw"
                 for w, info in pt["workloads"].items()]
        out.append("- passthrough, blockmirror serve: " + "; ".join(parts) +
                   f"; 4k randread {_x(_div(med('blockmirror', 'randread4k'), med('qemu-nbd', 'randread4k')))} qemu-nbd")
    qd = _load(folder, "qd-sweep")
    if qd:
        for w, info in qd["workloads"].items():
            res, lo, hi = qd["results"][w], str(qd["qds"][0]), str(qd["qds"][-1])

            def lat(target: str) -> str:
                v = res.get(target, {}).get(lo, {}).get("lat_p50_us", {}).get("median")
                return "n/a" if v is None else f"{v:,.0f} µs"

            ratio = res.get("blockmirror", {}).get(hi, {}).get("iops_ratio_to_raw")
            vs_qemu = _div(res.get("blockmirror", {}).get(hi, {}).get("iops", {}).get("median"),
                           res.get("qemu-nbd", {}).get(hi, {}).get("iops", {}).get("median"))
            out.append(f"- {info['title']}: p50 lat at QD{lo} raw {lat('raw')}, blockmirror {lat('blockmirror')}, "
                       f"qemu-nbd {lat('qemu-nbd')}; IOPS at QD{hi} blockmirror {_x(ratio)} raw, {_x(vs_qemu)} qemu-nbd")
    rec = _load(folder, "recovery")
    if rec:
        out += [f"- recovery, {k}: {_x(v)}" for k, v in rec.get("ratios", {}).items()]
    sc = _load(folder, "scaling")
    if sc and sc.get("results"):
        label = sc["meta"]["size_labels"][-1]
        row = sc["results"].get(label, {})

        def cell(target: str, metric: str, scale: float, unit: str) -> str:
            v = row.get(target, {}).get(metric, {}).get("median")
            return "n/a" if v is None else f"{v / scale:,.1f} {unit}"

        out.append(f"- scaling at {label}: time to in-sync blockmirror {cell('blockmirror', 'sync_s', 1, 's')}, qsd "
                   f"{cell('qsd', 'sync_s', 1, 's')}; peak RSS blockmirror {cell('blockmirror', 'rss_peak_kib', 1024, 'MiB')}, "
                   f"qsd {cell('qsd', 'rss_peak_kib', 1024, 'MiB')}; NEW allocated blockmirror "
                   f"{cell('blockmirror', 'target_alloc_bytes', 1 << 20, 'MiB')}, qsd "
                   f"{cell('qsd', 'target_alloc_bytes', 1 << 20, 'MiB')}")
    cc = _load(folder, "crash-cost")
    if cc:
        r, total = cc["results"], cc["regions_total"]
        out.append(f"- crash cost: kill -9 during writes: {r['during']['median']:g} of {total} regions copied again; "
                   f"{cc['meta']['idle_s']} s after them: {r['after_idle']['median']:g}")
    vm = _load(folder, "md-vm")
    if vm:
        out += [f"- md VM: {line}" for line in vm.get("compare", []) if line.startswith(("ratio ", "goal "))]
    return out


def measure_section(folder: str, name: str) -> list[str]:
    """A measure's printed report (NAME.md) without its "JSON results:" line; md-vm: its table."""
    if name == "md-vm":
        vm = _load(folder, "md-vm")
        return ["```", *vm.get("compare", []), "```"] if vm else []
    try:
        with open(os.path.join(folder, f"{name}.md")) as f:
            lines = f.read().rstrip().splitlines()
    except OSError:
        return []
    lines = [line for line in lines if not line.startswith("JSON results:")]
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def write_report(folder: str, pngs: list[str]) -> str:
    """Writes folder/REPORT.md; returns its path."""
    with open(os.path.join(folder, "measures.json")) as f:
        status = json.load(f)
    measures = status.get("measures", {})
    metas = [d["meta"] for d in (_load(folder, n) for n in measures) if d and "meta" in d]
    first = metas[0] if metas else {}
    lines = ["# BlockMirror benchmark report", ""]
    if status.get("quick"):
        lines += ["> **QUICK mode**: small files, 1 s runs, few repeats. These figures only show that the report "
                  "works; they are not for citing.", ""]
    commit = first.get("git_commit") or "?"
    dirty = " (with uncommitted changes)" if first.get("git_dirty") else ""
    lines += [f"Made {status.get('started', '?')} – {status.get('finished', '?')} by `{status.get('command')}` "
              f"at commit {commit[:12]}{dirty}, binary `{status.get('blockmirror_bin')}`.", ""]
    lines += [f"Machine: {status.get('machine') or '?'}", "", *machine(first), ""]
    tools = [d[k] for d in metas for k in ("fio", "qemu_nbd", "nbdkit", "qemu_storage_daemon", "qemu") if d.get(k)]
    if tools:
        lines += ["Tools: " + "; ".join(dict.fromkeys(tools)) + ".", ""]
    repeat = status.get("repeat")
    lines += [f"Every figure is the median of {repeat} run{'s' if repeat != 1 else ''} with the min–max in "
              "parentheses (bars or bands in the plots). Ratios compare peers of the same measure's run, whose "
              "targets were interleaved with their order rotated each round; the machine is not idle-proof, so "
              "read absolute figures as this machine's, and ratios as the comparison.", ""]
    heads = headlines(folder)
    if heads:
        lines += ["## Headlines", "", *heads, ""]
    if pngs:
        lines += ["## Plots", ""]
        for png in pngs:
            lines += [f"### {PLOT_TITLES.get(png, png)}", "", f"![{PLOT_TITLES.get(png, png)}]({png})", ""]
    for name in measures:
        body = measure_section(folder, name)
        lines += [f"## {TITLES.get(name, name)}", ""]
        if measures[name]["exit"] != 0:
            lines += [f"**This measure failed** (exit status {measures[name]['exit']}): see logs/{name}.log.", ""]
        lines += [*body, ""] if body else ["(no results)", ""]
    lines += ["## Runs", "", "| measure | exit status | minutes | command (with the report's settings) |",
              "|---|---|---|---|"]
    for name, m in measures.items():
        settings = " ".join(f"{k}={v}" for k, v in m.get("env", {}).items() if v)
        lines.append(f"| {name} | {m['exit']} | {m['seconds'] / 60:.1f} | `{settings} tools/bench.py "
                     f"{' '.join(m.get('argv', []))}` |")
    lines += ["", f"JSON of every measure: NAME.json beside this file; their messages: logs/.", ""]
    path = os.path.join(folder, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
