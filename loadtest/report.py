"""The outputs of a run: the versioned JSON result, the CSV of per-request records, and the console table.

The JSON result is self-describing: schema and version, the run's configuration (no API key) and environment, the
metric formulas, and per load point its summary, mergeable histograms, Prometheus timeline and warnings.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

from loadtest.accounting import FAILED, LOST, OUTCOMES, REJECTED, targets
from loadtest.metrics import FORMULAS, RequestRecord
from loadtest.runner import RunResult

SCHEMA, VERSION = "gptoss-loadtest-result", 1


def build_result(run: RunResult) -> dict:
    warnings = [w for p in run.points for w in p.warnings]
    return clean({
        "schema": SCHEMA, "version": VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": run.config.to_dict(), "environment": environment(), "formulas": FORMULAS,
        "best_load": {"mode": run.best.mode, "value": run.best.value} if run.best else None,
        "warnings": warnings,
        "points": [{"load": {"mode": p.point.mode, "value": p.point.value}, "summary": p.summary,
                    "histograms": p.metrics.to_dict(), "series": series(p.records),
                    "timeline": [{"t": t, **v} for t, v in p.timeline],
                    "warnings": p.warnings, "faults": [m.to_dict() for m in p.faults]} for p in run.points],
    })


def series(records: list[RequestRecord]) -> dict:
    """Successful completions and their output tokens per second, binned by completion time (warm-up included)
    into about 40 bins of 0.1 s to 10 s; and the requests per second that were rejected, failed or lost, binned
    by when they ended."""
    ok = [r for r in records if r.status == "ok" and r.done == r.done]
    end = max((r.done for r in records if r.done == r.done), default=0.0)
    bin_s = min(10.0, max(0.1, round(end / 40, 1)))
    n = int(end // bin_s) + 1
    out = {name: [0.0] * n for name in ("completed", "output_tok_s", REJECTED, FAILED, LOST)}
    for r in ok:
        out["completed"][int(r.done // bin_s)] += 1 / bin_s
        out["output_tok_s"][int(r.done // bin_s)] += r.output_tokens / bin_s
    for r in records:
        if r.outcome in (REJECTED, FAILED, LOST) and r.done == r.done:
            out[r.outcome][int(r.done // bin_s)] += 1 / bin_s
    return {"bin_s": bin_s, "t": [i * bin_s for i in range(n)]} | out


def clean(obj):
    """JSON-safe: NaN and infinities become null (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def environment() -> dict:
    import httpx

    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "hostname": platform.node(), "httpx": httpx.__version__,
            "loadtest_commit": _git_commit(), "argv": sys.argv}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                             capture_output=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(result: dict, path: Path) -> Path:
    path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    return path


def load_result(path: str | Path) -> dict:
    result = json.loads(Path(path).read_text())
    if result.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a load test result (schema {result.get('schema')!r})")
    if result.get("version", 0) > VERSION:
        raise ValueError(f"{path} has result version {result['version']}; this load tester reads up to {VERSION}")
    return result


def write_csv(run: RunResult, path: Path) -> Path:
    columns = ["load_mode", "load_value"] + list(RequestRecord("").row())
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for p in run.points:
            for rec in p.records:
                writer.writerow({"load_mode": p.point.mode, "load_value": p.point.value} | rec.row())
    return path


COLUMNS = (  # header, summary key, statistic, format
    ("load", None, None, "{}"), ("req/s", "request_throughput_rps", None, "{:.2f}"),
    ("goodput", "goodput_rps", None, "{:.2f}"), ("good%", "good_fraction", None, "{:.0%}"),
    ("out tok/s", "output_tok_s", None, "{:.0f}"), ("reas tok/s", "reasoning_tok_s", None, "{:.0f}"),
    ("TTFT p50", "ttft_ms", "p50", "{:.0f}"), ("TTFT p99", "ttft_ms", "p99", "{:.0f}"),
    ("final TTFT p50", "ttft_final_ms", "p50", "{:.0f}"), ("TPOT p50", "tpot_ms", "p50", "{:.1f}"),
    ("TPOT p99", "tpot_ms", "p99", "{:.1f}"), ("ITL p99", "itl_chunk_ms", "p99", "{:.1f}"),
    ("E2E p99", "e2e_ms", "p99", "{:.0f}"), ("lag p99", "send_lag_ms", "p99", "{:.1f}"), ("errors", "failed", None, "{}"),
)


def table(result: dict) -> str:
    """The console table: one row per load point (latencies in ms), then the best load and warnings."""
    rows = [[h for h, *_ in COLUMNS]]
    for p in result["points"]:
        s = p["summary"]
        load = f"{p['load']['value']:g}" + (" req/s" if p["load"]["mode"] == "rate" else " conc")
        rows.append([load] + [_cell(s, key, stat, fmt) for _, key, stat, fmt in COLUMNS[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    best = result.get("best_load")
    lines.append("best load meeting the SLOs: " + (f"{best['value']:g} ({best['mode']})" if best else "none"))
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    for p in result["points"]:
        if p["summary"].get("faults"):
            lines += ["", fault_table(p["summary"]["faults"])]
    return "\n".join(lines)


def fault_table(faults: list[dict]) -> str:
    """One row per fault: when, in flight at its start, each outcome of the requests it touched, the time to full
    goodput, and the targets it missed."""
    head = ["fault", "planned", "at s", "took s", "in flight", *OUTCOMES, "no hint", "recovery s", "missed"]
    rows = [head]
    for f in faults:
        o = f["outcomes"]
        missed = [name for name, ok in targets(f).items() if not ok] + (["action failed"] if f["error"] else [])
        rows.append([f["label"], "yes" if f["planned"] else "no", f"{f['start']:.1f}", f"{f['end'] - f['start']:.1f}",
                     str(f["in_flight_at_start"]), *(str(o[k]) for k in OUTCOMES),
                     str(o["rejected_without_retry_hint"]),
                     "-" if f["recovery_s"] is None else f"{f['recovery_s']:.1f}", ", ".join(missed) or "none"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _cell(summary: dict, key: str, stat: str | None, fmt: str) -> str:
    v = summary.get(key)
    if stat is not None:
        v = (v or {}).get(stat)
    return "-" if v is None else fmt.format(v)
