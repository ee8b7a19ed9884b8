#!/usr/bin/env python3
"""Helpers for tools/bench-passthrough.sh.

  bench_fio.py value FIO_OUTPUT DIRECTION METRIC
      Prints one number from fio's --output-format=json output: DIRECTION is read|write,
      METRIC is iops|mibs. Anything fio printed before the JSON (the nbd engine's
      "fio: connected to NBD server") is skipped. Exits 1 if fio reported an error.

  bench_fio.py report SAMPLES_TSV META_JSON OUT_JSON
      SAMPLES_TSV has lines "target<TAB>workload<TAB>round<TAB>value" (value "-" = failed run).
      Prints the markdown table of medians (each cell "value (ratio to raw)") and the goal
      lines, and writes everything as JSON to OUT_JSON. A missed goal is reported, not
      signalled: the exit code is 0 unless the input is broken.
"""
import json
import statistics
import sys

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


def load_fio_json(path):
    with open(path, "r", errors="replace") as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio output")
    # fio may also print trailing noise; raw_decode stops at the end of the first object.
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


def cmd_value(path, direction, metric):
    try:
        data = load_fio_json(path)
        job = data["jobs"][0]
    except (ValueError, KeyError, IndexError) as e:
        print(f"bench_fio: cannot parse {path}: {e}", file=sys.stderr)
        return 1
    if job.get("error", 0):
        print(f"bench_fio: fio reported error {job['error']} in {path}", file=sys.stderr)
        return 1
    side = job[direction]
    if side.get("total_ios", 0) == 0:
        print(f"bench_fio: fio completed no {direction} I/O in {path}", file=sys.stderr)
        return 1
    if metric == "iops":
        print(f"{side['iops']:.1f}")
    else:
        print(f"{side['bw_bytes'] / 1048576:.1f}")
    return 0


def fmt(value, metric):
    if value is None:
        return "n/a"
    if metric == "iops":
        return f"{value / 1000:.1f}k"
    return f"{value:,.0f}"


def cmd_report(samples_path, meta_path, out_path):
    with open(meta_path) as f:
        meta = json.load(f)
    samples = {}  # (target, workload) -> list of floats / None
    targets, workloads = [], []
    with open(samples_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            target, workload, rnd, value = line.split("\t")
            if target not in targets:
                targets.append(target)
            if workload not in workloads:
                workloads.append(workload)
            samples.setdefault((target, workload), []).append(None if value == "-" else float(value))
    order = [t for t in TARGET_TITLES if t in targets] + [t for t in targets if t not in TARGET_TITLES]
    workloads = [w for w in WORKLOADS if w in workloads]

    medians = {}
    for (t, w), vals in samples.items():
        ok = [v for v in vals if v is not None]
        medians[(t, w)] = statistics.median(ok) if ok else None

    def ratio(t, w, base="raw"):
        v, b = medians.get((t, w)), medians.get((base, w))
        if v is None or not b:
            return None
        return v / b

    header = "| target | " + " | ".join(WORKLOADS[w][0] for w in workloads) + " |"
    print(header)
    print("|---|" + "---|" * len(workloads))
    for t in order:
        cells = []
        for w in workloads:
            v, r = medians.get((t, w)), ratio(t, w)
            cell = fmt(v, WORKLOADS[w][2])
            if v is not None and r is not None:
                cell += f" ({r:.2f}x)"
            vals = samples.get((t, w), [])
            failed = sum(1 for x in vals if x is None)
            if failed:
                cell += f" [{failed}/{len(vals)} runs failed]"
            cells.append(cell)
        print(f"| {TARGET_TITLES.get(t, t)} | " + " | ".join(cells) + " |")
    print()
    runs = meta.get('repeat')
    print(f"Medians of {runs} run{'s' if runs != 1 else ''} of {meta.get('runtime_s')} s each, "
          f"image {meta.get('size_bytes', 0) / 1073741824:.2f} GiB; ratio = median / raw median.")

    goals = []

    def goal(name, value, threshold, against):
        status = "n/a" if value is None else ("PASS" if value >= threshold else "MISS")
        goals.append({"goal": name, "ratio": value, "threshold": threshold, "against": against, "status": status})
        return status

    rr_raw = ratio("blockmirror", "randread4k")
    rr_qemu = ratio("blockmirror", "randread4k", base="qemu-nbd")
    sr_raw = ratio("blockmirror", "seqread1m")
    s1 = goal("4k randread vs raw", rr_raw, 0.85, "raw")
    s2 = goal("4k randread vs qemu-nbd", rr_qemu, 2.0, "qemu-nbd")
    s3 = goal("1M read vs raw", sr_raw, 0.9, "raw")
    both = "PASS" if (s1, s2) == ("PASS", "PASS") else ("n/a" if "n/a" in (s1, s2) else "MISS")

    def r(x):
        return "n/a" if x is None else f"{x:.2f}x"

    print()
    print("Goals (blockmirror):")
    print(f"- 4k randread >= 0.85x raw and >= 2x qemu-nbd: {both} "
          f"({r(rr_raw)} raw [{s1}], {r(rr_qemu)} qemu-nbd [{s2}])")
    print(f"- 1M read >= 0.9x raw: {s3} ({r(sr_raw)} raw)")

    out = {
        "meta": meta,
        "workloads": {w: {"title": WORKLOADS[w][0], "direction": WORKLOADS[w][1],
                          "unit": "IOPS" if WORKLOADS[w][2] == "iops" else "MiB/s"} for w in workloads},
        "targets": {t: {"title": TARGET_TITLES.get(t, t),
                        "results": {w: {"samples": samples.get((t, w), []),
                                        "median": medians.get((t, w)),
                                        "ratio_to_raw": ratio(t, w)} for w in workloads}}
                    for t in order},
        "goals": goals,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    return 0


def main(argv):
    if len(argv) == 5 and argv[1] == "value":
        return cmd_value(argv[2], argv[3], argv[4])
    if len(argv) == 5 and argv[1] == "report":
        return cmd_report(argv[2], argv[3], argv[4])
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
