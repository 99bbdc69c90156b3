"""Compares two result files point by point (matched by offered load) and flags regressions.

A metric regresses when B is worse than A by more than the threshold, relative to A: throughputs and goodput
lower, latencies higher. The failed fraction regresses when it rises by more than threshold percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass

HIGHER_BETTER = ("request_throughput_rps", "goodput_rps", "output_tok_s", "good_fraction")
LOWER_BETTER = (("ttft_ms", "p50"), ("ttft_ms", "p99"), ("ttft_final_ms", "p50"), ("tpot_ms", "p50"),
                ("tpot_ms", "p99"), ("itl_chunk_ms", "p99"), ("e2e_ms", "p50"), ("e2e_ms", "p99"))
CONFIG_KEYS = ("model", "api", "arrival", "burstiness", "workload", "processes", "ignore_eos", "extra_body")


@dataclass
class Row:
    load: str
    metric: str
    a: float | None
    b: float | None
    change_pct: float | None     # (b - a) / a * 100; for failed_fraction, percentage points
    regression: bool


def compare(a: dict, b: dict, threshold_pct: float = 5.0) -> tuple[list[Row], list[str]]:
    """The rows for every shared load point and notes (unmatched points, differing configurations)."""
    notes = [f"configs differ in {k}: {a['config'].get(k)!r} vs {b['config'].get(k)!r}"
             for k in CONFIG_KEYS if a["config"].get(k) != b["config"].get(k)]
    points_b = {_key(p): p for p in b["points"]}
    rows = []
    for pa in a["points"]:
        pb = points_b.pop(_key(pa), None)
        if pb is None:
            notes.append(f"load {_name(pa)} only in A")
            continue
        rows += _point_rows(_name(pa), pa["summary"], pb["summary"], threshold_pct)
    notes += [f"load {_name(p)} only in B" for p in points_b.values()]
    rows += _best_load_rows(a, b)
    return rows, notes


def _point_rows(load: str, sa: dict, sb: dict, threshold: float) -> list[Row]:
    rows = []
    for key in HIGHER_BETTER:
        rows.append(_relative(load, key, sa.get(key), sb.get(key), threshold, higher_better=True))
    for key, stat in LOWER_BETTER:
        rows.append(_relative(load, f"{key} {stat}", (sa.get(key) or {}).get(stat), (sb.get(key) or {}).get(stat),
                              threshold, higher_better=False))
    fa, fb = (s["failed"] / s["requests"] if s.get("requests") else None for s in (sa, sb))
    change = (fb - fa) * 100 if fa is not None and fb is not None else None
    rows.append(Row(load, "failed_fraction", fa, fb, change, change is not None and change > threshold))
    return rows


def _relative(load: str, metric: str, a, b, threshold: float, higher_better: bool) -> Row:
    if a is None or b is None or a == 0:
        return Row(load, metric, a, b, None, False)
    change = (b - a) / abs(a) * 100
    worse = -change if higher_better else change
    return Row(load, metric, a, b, change, worse > threshold)


def _best_load_rows(a: dict, b: dict) -> list[Row]:
    ba, bb = a.get("best_load"), b.get("best_load")
    if not (len(a["points"]) > 1 and len(b["points"]) > 1):
        return []
    va, vb = (x["value"] if x else 0.0 for x in (ba, bb))
    return [Row("sweep", "best load meeting SLOs", va, vb, (vb - va) / va * 100 if va else None, vb < va)]


def _key(point: dict) -> tuple:
    return point["load"]["mode"], point["load"]["value"]


def _name(point: dict) -> str:
    return f"{point['load']['value']:g} " + ("req/s" if point["load"]["mode"] == "rate" else "conc")


def render(rows: list[Row], notes: list[str]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [f"{'load':>10}  {'metric':<24}{'A':>12}{'B':>12}{'change':>10}"]
    for r in rows:
        change = "-" if r.change_pct is None else f"{r.change_pct:+.1f}%"
        lines.append(f"{r.load:>10}  {r.metric:<24}{fmt(r.a):>12}{fmt(r.b):>12}{change:>10}"
                     + ("  REGRESSION" if r.regression else ""))
    lines += [f"note: {n}" for n in notes]
    regressions = sum(r.regression for r in rows)
    lines.append(f"{regressions} regression(s)" if regressions else "no regressions")
    return "\n".join(lines)
