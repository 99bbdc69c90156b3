"""The load generator's own ceiling, so a load test knows when it measures the generator instead of the server.

Two numbers for ONE generator process against the fake server (loadtest.fake_server, in its own process on
127.0.0.1, answering with no delay):
  1. streamed chunks/s it can consume (closed loop, long answers of one token per chunk);
  2. requests/s it can keep on schedule (open loop, Poisson, short answers): the highest rate of an ascending
     ladder whose send lag p99 stays under 10 ms with every request completed, and the first rate at which it is
     clearly saturated (median send lag over 10 ms).
Other processes on the machine (see load_average in the result) lower both numbers.
Prints a table and writes bench/results/loadtest_ceiling.json. Run: python -m bench.loadtest_ceiling [--duration S]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

from loadtest import runner
from loadtest.config import RunConfig
from loadtest.workload import WorkloadSpec

RESULTS = Path(__file__).parent / "results" / "loadtest_ceiling.json"
LAG_LIMIT_MS = 10.0
RATES = (50, 100, 200, 400, 800, 1600, 3200)


def _serve(port_queue, tokens: int, ttft_s: float) -> None:
    from loadtest.fake_server import FakeServer, steady_script

    with FakeServer(steady_script(tokens, ttft_s, 0.0)) as server:
        port_queue.put(server.port)
        server._thread.join()


def start_server(tokens: int, ttft_s: float) -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(q, tokens, ttft_s), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{q.get(timeout=30)}"


def chunk_ceiling(url: str, seconds: float, tokens: int, tokenizer: str) -> dict:
    cfg = RunConfig(url, "fake", concurrency=16, duration_s=seconds, warmup_s=0.5, progress=False,
                    tokenizer=tokenizer, workload=WorkloadSpec(input_len="16", output_len=str(tokens)))
    s = runner.run(cfg).points[0].summary
    chunks_per_s = s["output_tok_s"]          # one token per chunk
    return {"concurrency": 16, "tokens_per_answer": tokens, "chunks_per_s": chunks_per_s,
            "requests_per_s": s["request_throughput_rps"], "errors": s["errors"], "tokenizer": s["tokenizer"]}


def rate_ceiling(url: str, step_s: float, tokenizer: str, deadline: float) -> dict:
    """Ascending rates until the generator is clearly saturated (median send lag over the limit)."""
    steps = []
    for rate in RATES:
        if time.monotonic() + step_s + 1 > deadline:
            break
        cfg = RunConfig(url, "fake", rate=rate, duration_s=step_s, warmup_s=0.3, progress=False,
                        tokenizer=tokenizer, workload=WorkloadSpec(input_len="16", output_len="2"))
        s = runner.run(cfg).points[0].summary
        lag = s["send_lag_ms"]
        steps.append({"rate": rate, "requests": s["requests"], "completed_rps": s["request_throughput_rps"],
                      "lag_p50_ms": lag["p50"], "lag_p99_ms": lag["p99"], "failed": s["failed"],
                      "on_schedule": lag["p99"] <= LAG_LIMIT_MS and not s["failed"]})
        if lag["p50"] > LAG_LIMIT_MS:
            break
    kept = [s["rate"] for s in steps if s["on_schedule"]]
    saturated = [s["rate"] for s in steps if s["lag_p50_ms"] > LAG_LIMIT_MS]
    return {"lag_limit_ms": LAG_LIMIT_MS, "max_on_schedule_rps": max(kept, default=None),
            "saturated_at_rps": saturated[0] if saturated else None, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="total seconds, roughly")
    parser.add_argument("--tokenizer", default="auto", choices=["auto", "o200k", "words"])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    start = time.monotonic()
    proc, url = start_server(tokens=256, ttft_s=0.002)
    try:
        chunks = chunk_ceiling(url, args.duration * 0.3, 256, args.tokenizer)
        rates = rate_ceiling(url, args.duration * 0.06, args.tokenizer, start + args.duration + 5)
    finally:
        proc.terminate()
    result = {"bench": "loadtest_ceiling", "created_unix": time.time(), "generator_processes": 1,
              "chunks": chunks, "rates": rates,
              "environment": {"python": sys.version.split()[0], "platform": platform.platform(),
                              "cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    print(f"wrote {args.out}")
    return 0


def render(result: dict) -> str:
    c, r = result["chunks"], result["rates"]
    env = result["environment"]
    lines = [f"generator ceiling, one process ({c['tokenizer']} tokenizer, {env['cpus']} CPUs, load average "
             f"{env['load_average'][0]:.1f})",
             f"  streamed chunks/s consumed     {c['chunks_per_s']:10.0f}   (concurrency {c['concurrency']}, "
             f"{c['tokens_per_answer']} chunks per answer, {c['requests_per_s']:.1f} req/s)",
             f"  requests/s kept on schedule    {r['max_on_schedule_rps'] or 0:10}   (send lag p99 <= "
             f"{r['lag_limit_ms']:g} ms)",
             f"  saturated at requests/s        {r['saturated_at_rps'] or '-':>10}   (send lag p50 > "
             f"{r['lag_limit_ms']:g} ms)", "", f"  {'rate':>6} {'sent':>6} {'done/s':>8} {'lag p50':>8} {'lag p99':>8}  kept"]
    for s in r["steps"]:
        lines.append(f"  {s['rate']:>6} {s['requests']:>6} {s['completed_rps']:8.1f} {s['lag_p50_ms']:8.2f} {s['lag_p99_ms']:8.2f}  "
                     f"{'yes' if s['on_schedule'] else 'no'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
