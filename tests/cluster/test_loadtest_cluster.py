"""The load tester against the real cluster (Ray Serve, AsyncLLM on the tiny model): a run writes its JSON, CSV and
PNG files, counts every request, and puts the server's queue depth and KV usage on its timeline."""

import csv
import json
import subprocess
import sys

from tests.cluster.conftest import model_entry


def test_loadtest_run_against_the_cluster(serve_app, tiny_model, tmp_path):
    base = serve_app({"models": [model_entry("tiny", tiny_model)]}, "loadtest")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine.cli", "loadtest", "run", "--url", base, "--model", "tiny", "--api", "chat",
           "--concurrency", "4", "--num-requests", "12", "--input-len", "64", "--output-len", "64", "--ignore-eos",
           "--scrape-metrics", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    (point,) = result["points"]
    summary = point["summary"]
    assert summary["requests"] == 12 and summary["completed"] == 12 and summary["failed"] == 0, summary
    assert summary["errors"] == {}
    # the server's gptoss_num_requests_waiting and gptoss_kv_cache_usage_perc, scraped during the run (64 output tokens
    # keep it running for several scrapes, with blocks in use)
    assert point["timeline"] and all({"queue_depth", "kv_cache_usage"} <= set(s) for s in point["timeline"])
    assert max(s["kv_cache_usage"] for s in point["timeline"]) > 0
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).stat().st_size > 1000 for p in pngs)
    assert (out / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
