"""`gptoss loadtest run | compare | plot | fake-server`: flags -> RunConfig -> runner -> report files and table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from loadtest.config import DEFAULT_METRIC_NAMES


def add_commands(commands: argparse._SubParsersAction) -> None:
    loadtest = commands.add_parser("loadtest", help="load-test an OpenAI-compatible server; compare results")
    sub = loadtest.add_subparsers(dest="loadtest_command", required=True, metavar="SUBCOMMAND")
    _add_run(sub.add_parser("run", help="run a load test and write result.json, requests.csv and plots"))
    compare = sub.add_parser("compare", help="compare two result files; exit 1 on a regression")
    compare.add_argument("a", help="baseline result.json")
    compare.add_argument("b", help="candidate result.json")
    compare.add_argument("--threshold", type=float, default=5.0, help="percent worse that counts as a regression")
    compare.set_defaults(run=_run_compare)
    plot = sub.add_parser("plot", help="redraw the PNG plots of a result file")
    plot.add_argument("result")
    plot.add_argument("--out", default=None, help="folder for the PNGs (default: beside the result)")
    plot.set_defaults(run=_run_plot)
    fake = sub.add_parser("fake-server", help="serve a deterministic fake OpenAI-compatible stream on 127.0.0.1")
    fake.add_argument("--port", type=int, default=8000)
    fake.add_argument("--tokens", type=int, default=64, help="tokens per answer (capped by max_tokens)")
    fake.add_argument("--ttft-ms", type=float, default=50.0)
    fake.add_argument("--itl-ms", type=float, default=10.0)
    fake.set_defaults(run=_run_fake_server)


def _add_run(run: argparse.ArgumentParser) -> None:
    a = run.add_argument
    a("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000, or grpc://HOST:PORT (the gRPC "
                                    "gateway); several, comma-separated, take requests in turn; the only hosts "
                                    "contacted")
    a("--model", required=True)
    a("--api", choices=["chat", "completions"], default="chat")
    a("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default: $OPENAI_API_KEY)")
    load = run.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="closed loop: requests in flight (default 1)")
    load.add_argument("--rate", type=float, help="open loop: requests/s")
    load.add_argument("--sweep-rates", type=_floats, help="open-loop sweep, e.g. 1,2,4")
    load.add_argument("--sweep-concurrency", type=_ints, help="closed-loop sweep, e.g. 1,4,16")
    a("--arrival", choices=["poisson", "gamma", "constant"], default="poisson")
    a("--burstiness", type=float, default=1.0, help="gamma shape: <1 burstier than Poisson, >1 smoother")
    a("--duration", type=float, default=None, help="measured seconds per point (default 60, or unbounded "
                                                    "when --num-requests is given)")
    a("--num-requests", type=int, default=None, help="measured requests per point")
    a("--warmup", type=float, default=0.0, help="seconds of unmeasured load before the measured part")
    a("--ramp-up", type=float, default=0.0, help="seconds over which the load rises linearly to its target")
    a("--input-len", default="512", help="tokens per turn: N, uniform:LO:HI, normal:MEAN:STD, lognormal:MED:SIGMA")
    a("--output-len", default="128", help="max_tokens per turn, same forms as --input-len")
    a("--prefix-groups", type=int, default=0, help="groups of sessions sharing a first-turn prefix")
    a("--prefix-len", type=int, default=0, help="tokens in each shared prefix")
    a("--turns", type=int, default=1, help="turns per session; each turn carries the previous answers")
    a("--prompts-file", default=None, help="JSONL of prompts (prompt | messages | turns, optional max_tokens)")
    a("--tokenizer", default="auto", choices=["auto", "o200k", "words"])
    a("--slo-ttft-ms", type=float, default=None, help="SLO on time to first token of any channel")
    a("--slo-ttft-final-ms", type=float, default=None, help="SLO on time to the first answer token")
    a("--slo-tpot-ms", type=float, default=None)
    a("--slo-e2e-ms", type=float, default=None)
    a("--slo-attainment", type=float, default=0.9, help="fraction of requests that must meet the SLOs")
    a("--processes", type=int, default=1, help="generator processes (histograms merge exactly)")
    a("--request-timeout", type=float, default=300.0)
    a("--ignore-eos", action="store_true", help="send ignore_eos so answers run to max_tokens (vLLM, SGLang)")
    a("--extra-body", type=json.loads, default={}, help='JSON merged into each request, e.g. '
                                                         '\'{"reasoning_effort": "low"}\'')
    a("--scrape-metrics", action="store_true", help="scrape URL/metrics during the run")
    a("--metrics-url", default=None, help="scrape this Prometheus endpoint instead")
    a("--metric-queue", default=DEFAULT_METRIC_NAMES["queue_depth"], help="queue depth metric name")
    a("--metric-kv", default=DEFAULT_METRIC_NAMES["kv_cache_usage"], help="KV-cache usage metric name")
    a("--lag-warn-ms", type=float, default=10.0, help="warn when p99 send lag exceeds this")
    a("--seed", type=int, default=0)
    a("--faults", default=None, metavar="SCHEDULE", help="YAML list of {at: 30s, action: NAME, ...}: fault actions "
                                                         "run during the run (loadtest/faults.py; one load point)")
    a("--ray-address", default="auto", help="the Ray cluster the fault actions act on (GCS address)")
    a("--app-name", default="gptoss", help="the Serve application the fault actions act on")
    a("--serve-config", default=None, help="the application's config file (for redeploy and scale actions)")
    a("--recovery-window", type=float, default=5.0, help="seconds of the goodput window per-fault recovery uses")
    a("--no-progress", action="store_true")
    a("--no-plots", action="store_true")
    a("--out", default=None, help="output folder (default loadtest-results/<time>)")
    run.set_defaults(run=_run_run)


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def config_from_args(args: argparse.Namespace):
    from loadtest.config import RunConfig
    from loadtest.faults import FaultContext, load_schedule
    from loadtest.metrics import Slo
    from loadtest.workload import WorkloadSpec

    metrics_url = args.metrics_url or (args.url.rstrip("/") + "/metrics" if args.scrape_metrics else None)
    context = FaultContext(args.ray_address, args.app_name, args.serve_config)
    faults = []
    if args.faults:
        import yaml

        faults = yaml.safe_load(Path(args.faults).read_text())
        load_schedule(faults, context)  # unknown actions and bad parameters fail here, before any load
    return RunConfig(
        url=args.url, model=args.model, api=args.api, api_key=args.api_key, concurrency=args.concurrency,
        rate=args.rate, arrival=args.arrival, burstiness=args.burstiness, sweep_rates=args.sweep_rates or [],
        sweep_concurrency=args.sweep_concurrency or [], duration_s=args.duration, num_requests=args.num_requests,
        warmup_s=args.warmup, ramp_up_s=args.ramp_up,
        workload=WorkloadSpec(args.input_len, args.output_len, args.prefix_groups, args.prefix_len, args.turns,
                              args.prompts_file, args.seed),
        slo=Slo(args.slo_ttft_ms, args.slo_ttft_final_ms, args.slo_tpot_ms, args.slo_e2e_ms, args.slo_attainment),
        processes=args.processes, request_timeout_s=args.request_timeout, ignore_eos=args.ignore_eos,
        extra_body=args.extra_body, tokenizer=args.tokenizer, metrics_url=metrics_url,
        metric_names={"queue_depth": args.metric_queue, "kv_cache_usage": args.metric_kv},
        lag_warn_ms=args.lag_warn_ms, progress=not args.no_progress, seed=args.seed, faults=faults,
        fault_context=context, recovery_window_s=args.recovery_window)


def _run_run(args: argparse.Namespace) -> int:
    from loadtest import report, runner

    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"gptoss loadtest: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"loadtest-results/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    run = runner.run(config)
    result = report.build_result(run)
    written = [report.write_json(result, out / "result.json"), report.write_csv(run, out / "requests.csv")]
    if not args.no_plots:
        from loadtest.plots import write_plots

        written += write_plots(result, out)
    print(report.table(result))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if any(p["summary"]["completed"] for p in result["points"]) else 1


def _run_compare(args: argparse.Namespace) -> int:
    from loadtest.compare import compare, render
    from loadtest.report import load_result

    rows, notes = compare(load_result(args.a), load_result(args.b), args.threshold)
    print(render(rows, notes))
    return 1 if any(r.regression for r in rows) else 0


def _run_plot(args: argparse.Namespace) -> int:
    from loadtest.plots import write_plots
    from loadtest.report import load_result

    paths = write_plots(load_result(args.result), Path(args.out or Path(args.result).parent))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_fake_server(args: argparse.Namespace) -> int:
    from loadtest.fake_server import serve_forever, steady_script

    print(f"fake OpenAI-compatible server on http://127.0.0.1:{args.port}", file=sys.stderr)
    serve_forever(args.port, steady_script(args.tokens, args.ttft_ms / 1e3, args.itl_ms / 1e3))
    return 0
