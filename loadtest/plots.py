"""PNG plots of a result (the JSON dict, so a saved result can be re-plotted): latency CDFs, throughput and goodput
against offered load, and a per-point timeline of completions with the server's queue depth and KV-cache usage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from loadtest.histogram import Histogram  # noqa: E402

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
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, path)


def _versus_load(result: dict, path: Path) -> Path:
    pts = result["points"]
    x = [p["load"]["value"] for p in pts]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label in (("request_throughput_rps", "throughput"), ("goodput_rps", "goodput (meets SLOs)")):
        ax.plot(x, [p["summary"][key] or 0 for p in pts], "o-", label=f"{label}, req/s")
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
    pts = result["points"]
    fig, axes = plt.subplots(len(pts), 1, figsize=(10, 3 * len(pts)), squeeze=False)
    for ax, p in zip(axes[:, 0], pts):
        series = p.get("series") or {}
        ax.step(series.get("t", []), series.get("completed", []), where="post", label="completed req/s")
        ax.set(xlabel="s from start", ylabel="req/s", title=_label(p))
        right = ax.twinx()
        for name in sorted({k for s in p.get("timeline", []) for k in s if k != "t"}):
            samples = [(s["t"], s[name]) for s in p["timeline"] if name in s]
            right.plot([t for t, _ in samples], [v for _, v in samples], ".-", label=name)
        right.set_ylabel("server metric")
        ax.legend(loc="upper left", fontsize=7)
        if right.lines:
            right.legend(loc="upper right", fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
