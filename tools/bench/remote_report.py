"""The remote recovery benchmark's report: a table per variant (plain, the delay filter) of the
recovery times onto the second host, their rates and the ratios blockmirror / peer, the issue's
goals (PASS/MISS: a miss is reported, not signalled), the 4k randwrite table (the mirror's target
remote vs local), the notes, and the JSON results file.
"""
from __future__ import annotations

from . import MIB
from .recovery_report import Stats, div, fmt_num, fmt_ratio, fmt_time, print_ratios
from .results import Samples, write_json

# (peer, what its row measures)
PEERS = [("blockmirror", "blockmirror build --target missing + add {uri}, until in-sync"),
         ("qsd", "qsd blockdev-mirror sync=full onto blockdev-add driver=nbd, until ready"),
         ("nbdcopy", "nbdcopy OLD {uri} (a copy only: serves nobody meanwhile)")]
# (peer, threshold): blockmirror's recovery time must be <= threshold x the peer's
GOALS = [("qsd", 0.9), ("nbdcopy", 1.1)]


class Report:
    """The tables of one run; rows collects every summary shown, goals every goal, for the JSON."""

    def __init__(self, samples: Samples, meta: dict):
        self.stats, self.meta = Stats(samples), meta
        self.mib = meta["size_bytes"] / MIB
        self.rows: dict[str, dict] = {}
        self.goals: list[dict] = []

    def summary(self, target: str, metric: str) -> dict:
        s = self.stats(target, metric)
        if s["runs"]:
            self.rows[f"{target}.{metric}"] = s
        return s

    def variant_title(self, variant: str) -> str:
        m = self.meta
        if variant == "delay":
            return (f"with {m['delay_ms']} ms added to every {', '.join(m['delayed_requests'])} request "
                    "(nbdkit's delay filter)")
        return "plain"

    def recovery_table(self, variant: str) -> None:
        m = self.meta
        print(f"Recovery of {m['size_bytes'] / 1073741824:.2f} GiB of random data (OLD -> NEW on the second host, "
              f"nbdkit over TCP across veth), {self.variant_title(variant)}: medians of {m['repeat']} (min–max); "
              "rate = size / time; blockmirror / peer = blockmirror's time / the peer's (lower is better)")
        print()
        print("| peer | time | rate (MiB/s) | blockmirror / peer |")
        print("|---|---|---|---|")
        metric = f"{variant}.recovery_s"
        bm = self.stats.median("blockmirror", metric)
        uri = f"nbd://{m['remote_address']}:{m['port']}/"
        rows = [(title.format(uri=uri), peer, metric) for peer, title in PEERS]
        if variant == "plain":
            rows.append(("reference: blockmirror onto a local file (same commands), until in-sync", "blockmirror",
                         "local.recovery_s"))
        for title, peer, row_metric in rows:
            s = self.summary(peer, row_metric)
            if s["runs"] == 0:
                continue
            rate = self.mib / s["median"] if s["median"] else None
            ratio = "" if peer == "blockmirror" else fmt_ratio(div(bm, s["median"]))
            print(f"| {title} | {fmt_time(s)} | {'n/a' if rate is None else f'{rate:,.0f}'} | {ratio} |")
        print()
        lines = [self.goal(variant, peer, threshold) for peer, threshold in GOALS
                 if self.stats(peer, metric)["runs"] and self.stats("blockmirror", metric)["runs"]]
        if lines:  # not when a peer or blockmirror was left out of TARGETS
            print(f"Goals (blockmirror's recovery time, {variant}):")
            print("\n".join(lines))
            print()

    def goal(self, variant: str, peer: str, threshold: float) -> str:
        """blockmirror's recovery time <= threshold x the peer's, as a line; kept for the JSON."""
        metric = f"{variant}.recovery_s"
        ratio = div(self.stats.median("blockmirror", metric), self.stats.median(peer, metric))
        status = "n/a" if ratio is None else ("PASS" if ratio <= threshold else "MISS")
        self.goals.append({"goal": f"recovery time <= {threshold}x {peer}'s", "variant": variant,
                           "ratio": ratio, "threshold": threshold, "against": peer, "status": status})
        return f"- <= {threshold}x {peer}'s: {status} ({fmt_ratio(ratio)})"

    def randwrite_table(self) -> None:
        m = self.meta
        local, remote = (self.summary("blockmirror", f"{v}.randwrite4k_iops") for v in ("local", "plain"))
        if not local["runs"] and not remote["runs"]:
            return
        print(f"4k randwrite QD32, fio nbd on the in-sync blockmirror mirror's export, {m['runtime_s']} s runs, "
              f"medians of {m['repeat']} (min–max)")
        print()
        print("| the mirror's target | IOPS | remote / local |")
        print("|---|---|---|")
        print(f"| a local file | {fmt_num(local, 'IOPS')} | |")
        print(f"| the second host (nbdkit over TCP, plain) | {fmt_num(remote, 'IOPS')} | "
              f"{fmt_ratio(div(remote['median'], local['median']))} |")
        print()

    def ratios(self) -> dict:
        med = self.stats.median
        out = {}
        for variant in self.meta["variants"]:
            if variant == "local":
                continue
            for peer, _ in GOALS:
                out[f"recovery time, {variant}, blockmirror / {peer}"] = div(med("blockmirror", f"{variant}.recovery_s"),
                                                                             med(peer, f"{variant}.recovery_s"))
        out["recovery time, blockmirror, remote / local target"] = div(med("blockmirror", "plain.recovery_s"),
                                                                       med("blockmirror", "local.recovery_s"))
        out["4k randwrite IOPS in sync, remote / local target"] = div(med("blockmirror", "plain.randwrite4k_iops"),
                                                                      med("blockmirror", "local.randwrite4k_iops"))
        return out


def report(samples: Samples, meta: dict, out_path: str) -> None:
    """Prints the tables, the goals, the ratios and the notes; writes everything as JSON to
    out_path."""
    r = Report(samples, meta)
    for variant in meta["variants"]:
        if variant != "local":
            r.recovery_table(variant)
    r.randwrite_table()
    ratios = r.ratios()
    print_ratios("Ratios (medians; of times: < 1 means blockmirror takes less; of IOPS: < 1 means fewer on the remote target):",
                 ratios, meta.get("notes"))
    write_json(out_path, {"meta": meta, "results": r.rows, "goals": r.goals, "ratios": ratios,
                          "samples": r.stats.all_samples()})
