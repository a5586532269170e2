"""Summaries and the table of bench/run: median and spread of repeated runs, ratios against a baseline measured in
the same run, goals, and the flag for results whose spread is too wide to trust.

spread = interquartile range / median over the runs (quartiles interpolated; robust to one run a neighbour's build
disturbed; for 3 runs it is half the range). A value, or a ratio whose paired per-run ratios, spreads more than
WIDE, or that has fewer than 3 runs, is flagged "WIDE": read it as "not measured well enough on this box", not as
a result. The JSON keeps every run's value, min and max.
"""
import statistics

WIDE = 0.15


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    median = statistics.median(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    spread = (q3 - q1) / median if median else 0.0
    return {"n": len(values), "median": median, "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "spread": spread, "wide": len(values) < 3 or spread > WIDE, "values": values}


def ratio(candidate, baseline):
    """median(candidate) / median(baseline), and the spread of the per-run ratios (runs are paired: interleaved)."""
    c, b = summary(candidate), summary(baseline)
    if not c or not b or not b["median"]:
        return None
    pairs = [x / y for x, y in zip(candidate, baseline) if x is not None and y]
    paired = summary(pairs)
    return {"value": c["median"] / b["median"], "paired": paired,
            "wide": c["wide"] or b["wide"] or (paired is not None and paired["wide"])}


UNITS = {
    "bit/s": lambda v: f"{v / 1e9:.2f} Gbit/s" if v >= 1e9 else f"{v / 1e6:.0f} Mbit/s",
    "us": lambda v: f"{v:.0f} µs" if v < 10000 else f"{v / 1000:.1f} ms",
    "s": lambda v: f"{v:.2f} s",
    "KiB": lambda v: f"{v / 1024:.1f} MiB",
    "%": lambda v: f"{v:.1f} %",
    "cpu-s": lambda v: f"{v:.2f} CPU-s",
    "cpu-s/GB": lambda v: f"{v:.2f} CPU-s/GB",
    "count": lambda v: f"{v:.0f}",
}


def show(value, unit):
    return UNITS[unit](value) if value is not None else "—"


def row(case, what, unit, values=None, baseline=None, baseline_name="", goal=None, note="", available=True):
    """One line of the table. goal = (text, "<=" or ">=", target): on the ratio when there is a baseline, else on
    the median; (text, op, target, "median"): on the median, with the ratio shown beside it."""
    r = {"case": case, "what": what, "unit": unit, "available": available, "note": note}
    if not available:
        return r
    r["summary"] = summary(values or [])
    if baseline is not None:
        r["baseline"] = {"name": baseline_name, "summary": summary(baseline)}
        r["ratio"] = ratio(values or [], baseline)
    if goal:
        text, op, target, *on = goal
        r["goal"] = text
        if baseline is not None and on != ["median"]:
            measured = r["ratio"]["value"] if r["ratio"] else None
        else:
            measured = r["summary"]["median"] if r["summary"] else None
        if measured is None:
            r["verdict"] = "no data"
        else:
            ok = measured <= target if op == "<=" else measured >= target
            r["verdict"] = "meets" if ok else "misses"
    return r


def table(rows):
    header = ["case", "measurement", "median (runs, spread)", "baseline (median)", "ratio (spread)", "goal",
              "verdict"]
    lines = []
    for r in rows:
        if not r["available"]:
            lines.append([r["case"], r["what"], "not available", "", "", r.get("goal", ""), r["note"]])
            continue
        s = r["summary"]
        if not s:
            lines.append([r["case"], r["what"], "no data (every run failed)", "", "", r.get("goal", ""),
                          r.get("note", "")])
            continue
        value = f"{show(s['median'], r['unit'])} ({s['n']}, {s['spread'] * 100:.0f} %)"
        base, ratio_text = "", ""
        if "baseline" in r and r["baseline"]["summary"]:
            base = f"{r['baseline']['name']} {show(r['baseline']['summary']['median'], r['unit'])}"
            if r["ratio"]:
                paired = r["ratio"]["paired"]
                ratio_text = f"{r['ratio']['value']:.3f}x" + (f" ({paired['spread'] * 100:.0f} %)" if paired else "")
        flags = []
        if s["wide"] or (r.get("ratio") and r["ratio"]["wide"]):
            flags.append("WIDE")
        verdict = r.get("verdict", "")
        if flags:
            verdict = (verdict + " " if verdict else "") + "[" + ",".join(flags) + "]"
        if r.get("note"):
            verdict = (verdict + " " if verdict else "") + r["note"]
        lines.append([r["case"], r["what"], value, base, ratio_text, r.get("goal", ""), verdict])
    widths = [max(len(str(line[i])) for line in [header] + lines) for i in range(len(header) - 1)]
    out = []
    for line in [header] + lines:
        cells = [str(line[i]).ljust(widths[i]) for i in range(len(header) - 1)] + [str(line[-1])]
        out.append("  ".join(cells).rstrip())
        if line is header:
            out.append("  ".join("-" * w for w in widths) + "  -------")
    return "\n".join(out)
