"""PNG plots of a result (the JSON dict, so a saved result can be re-plotted): latency CDFs, throughput and goodput
against offered load, and a per-point timeline of completions with the server's queue depth and KV-cache usage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from loadtest.histogram import Histogram  # noqa: E402

PLAIN = FuncFormatter(lambda v, _: f"{v:g}")

CDF_PANELS = (("ttft_ms", "ttft_final_ms"), ("tpot_ms",), ("itl_chunk_ms", "itl_token_ms"), ("e2e_ms",))


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_latency_cdfs(result, out_dir / "latency_cdf.png"), _versus_load(result, out_dir / "load.png")]
    paths.append(_timeline(result, out_dir / "timeline.png"))
    return paths


def _label(point: dict) -> str:
    load = point["load"]
    return f"{load['value']:g} req/s" if load["mode"] == "rate" else f"concurrency {load['value']:g}"


def _latency_cdfs(result: dict, path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, names in zip(axes.flat, CDF_PANELS):
        for point in result["points"]:
            for style, name in zip(("-", "--"), names):
                cdf = Histogram.from_dict(point["histograms"][name]).cdf()
                if cdf:
                    ax.plot([x for x, _ in cdf], [y for _, y in cdf], style, label=f"{name} {_label(point)}")
        ax.set(xscale="log", xlabel="ms", ylabel="fraction of samples", title=" / ".join(names), ylim=(0, 1.01))
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_formatter(PLAIN if ax.lines and _narrow(ax) else NullFormatter())
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, path)


def _narrow(ax) -> bool:
    lo, hi = ax.get_xlim()
    return lo > 0 and hi / lo < 20


def _versus_load(result: dict, path: Path) -> Path:
    pts = result["points"]
    x = [p["load"]["value"] for p in pts]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label, style in (("request_throughput_rps", "throughput", "o-"),
                              ("goodput_rps", "goodput (meets SLOs)", "^--")):
        ax.plot(x, [p["summary"][key] or 0 for p in pts], style, label=f"{label}, req/s")
    ax.set(xlabel="offered load (" + ("req/s" if pts[0]["load"]["mode"] == "rate" else "concurrency") + ")",
           ylabel="requests/s", title="throughput and goodput against offered load")
    tok = ax.twinx()
    tok.plot(x, [p["summary"]["output_tok_s"] or 0 for p in pts], "s:", color="gray", label="output tok/s")
    tok.set_ylabel("output tokens/s")
    ax.legend(loc="upper left")
    tok.legend(loc="lower right")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _timeline(result: dict, path: Path) -> Path:
    """Three rows sharing the time axis, one line per load point: completions/s (with the requests rejected, failed
    or lost per second when there were any), queue depth, KV-cache usage; every fault shaded and labelled."""
    rows = (("completed", "completed req/s"), ("queue_depth", "queue depth (waiting requests)"),
            ("kv_cache_usage", "KV-cache usage"))
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 8), sharex=True)
    for p in result["points"]:
        series = p.get("series") or {}
        axes[0].step(series.get("t", []), series.get("completed", []), where="post", label=_label(p))
        for name, color in (("rejected", "orange"), ("failed", "red"), ("lost", "black")):
            if any(series.get(name) or ()):
                axes[0].step(series["t"], series[name], where="post", color=color, label=f"{name}/s {_label(p)}")
        _mark_faults(axes, p.get("faults") or [])
        for ax, (name, _) in zip(axes[1:], rows[1:]):
            samples = [(s["t"], s[name]) for s in p.get("timeline", []) if s.get(name) is not None]
            if samples:
                ax.plot([t for t, _ in samples], [v for _, v in samples], ".-", label=_label(p))
    for ax, (name, title) in zip(axes, rows):
        ax.set(ylabel=title)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not scraped (--scrape-metrics)", ha="center", transform=ax.transAxes)
    axes[-1].set_xlabel("s from the start of each load point")
    return _save(fig, path)


def _mark_faults(axes, faults: list[dict]) -> None:
    """Each fault action as a shaded span (at least a line) on every row, labelled on the top row."""
    for f in faults:
        color = "tab:green" if f["planned"] else "tab:red"
        for ax in axes:
            ax.axvspan(f["start"], max(f["end"], f["start"] + 0.2), color=color, alpha=0.15)
        axes[0].annotate(f["label"], (f["start"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                         va="top", ha="right", fontsize=7, color=color)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
