"""The safety layer's cost under load: 64 concurrent streams with it on (a named key with quotas in the ledger, the
audit log, a regex / PII filter on input and output) against the same workload with it off, in one run.

    python -m bench.safety [--streams 64] [--tokens 32] [--rounds 3] [--model .cache/tiny-model]

One local Ray cluster, two applications deployed as `make serve` deploys one, each with its own LLMServer replica of
the tiny model on CPU (a batch wide enough for every stream), its Ingress and its GrpcGateway:
  off  no API keys, no audit log, no filters
  on   a named key (quotas far above the load, so every admission asks the ledger and none is refused), the audit log
       (JSONL files), the built-in regex filter (e-mail, phone, card) on every request's input and output (windows
       of guards.every_tokens 16)
Each round runs, one after the other (rotating who goes first), a burst of `--streams` concurrent streamed chats of
`--tokens` output tokens (ignore_eos) per app and protocol: HTTP with the official openai client, gRPC Chat. Per
path: output tokens per second over the burst (first request sent to last token) and TTFT quantiles (client side:
the first chunk with a choice / the first message with tokens). Targets: throughput on >= 0.95x off, p50 TTFT on at
most 2 ms above off. Writes bench/results/safety.json. With an output filter the replica streams in windows of
every_tokens, each released once the filter passed it, so TTFT with the layer on includes that hold-back by design;
`--no-output-filter` keeps the filter on input only and writes bench/results/safety_admission.json: the admission
path's cost (key, ledger, audit, input filter) alone.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx
import openai
import ray
from ray import serve

from bench.frontdoor import grpc_stream, http_stream
from cluster.app import build_from_config
from cluster.config import load_config
from cluster.grpc import codegen

RESULTS = Path(__file__).parent / "results"
KEY = "sk-bench-safety-0123456789"
APPS = ("off", "on")
PROTOCOLS = ("http", "grpc")
TARGETS = {"throughput_ratio_min": 0.95, "ttft_p50_added_ms_max": 2.0}


def app_config(name: str, model: str, streams: int, grpc_port: int, audit_dir: str, output_filter: bool = True
               ) -> dict:
    engine = {"kv_cache_memory": 64 << 20, "max_model_len": 1024, "max_num_seqs": streams}
    config = {"name": name, "grpc": {"enabled": True, "port": grpc_port},
              "models": [{"name": "tiny", "path": str(Path(model).absolute()), "dtype": "float32", "device": "cpu",
                          "num_cpus": 1, "engine": engine}]}
    if name == "off":
        return {**config, "audit": {"enabled": False}}
    import hashlib  # noqa: PLC0415

    key = {"name": "bench", "secrets": [{"sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
           "quotas": {"requests_per_min": 1_000_000, "tokens_per_min": 100_000_000, "tokens_per_day": 10 ** 12}}
    return {**config, "auth": {"keys": [key]}, "audit": {"dir": audit_dir},
            "guards": {"every_tokens": 16, "filters": {"pii": {"type": "regex"}},
                       "models": {"tiny": {"input": ["pii"], "output": ["pii"] if output_filter else []}}}}


async def burst(app: dict, protocol: str, streams: int, tokens: int) -> dict:
    t0 = time.monotonic()
    if protocol == "http":
        runs = [http_stream(app["openai"], i, tokens, t0) for i in range(streams)]
    else:
        runs = [grpc_stream(app["stub"], app["pb"], i, tokens, t0, (("authorization", f"Bearer {KEY}"),))
                for i in range(streams)]
    results = await asyncio.gather(*runs)
    return {"tokens": sum(r[2] for r in results), "seconds": max(r[1] for r in results),
            "ttft": [r[0] for r in results]}


def clients(http_port: int, grpc_ports: dict) -> dict:
    stubs = codegen.stubs()
    out = {}
    for name in APPS:
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=500))
        out[name] = {"openai": openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http_port}/{name}/v1", api_key=KEY,
                                                  max_retries=0, timeout=600, http_client=http),
                     "stub": stubs.grpc.InferenceStub(grpc.aio.insecure_channel(f"127.0.0.1:{grpc_ports[name]}")),
                     "pb": stubs.pb}
    return out


async def measure(http_port: int, grpc_ports: dict, streams: int, tokens: int, rounds: int) -> dict:
    apps = clients(http_port, grpc_ports)
    paths = [(a, p) for a in APPS for p in PROTOCOLS]
    for app, protocol in paths:  # warm-up: connections, the routers' view, the engines' first steps, the ledger
        await burst(apps[app], protocol, 8, 8)
    samples = {f"{a}/{p}": [] for a, p in paths}
    for r in range(rounds):
        for app, protocol in paths[r % len(paths):] + paths[:r % len(paths)]:
            result = await burst(apps[app], protocol, streams, tokens)
            samples[f"{app}/{protocol}"].append(result)
            print(f"  round {r + 1} {app}/{protocol}: {result['tokens'] / result['seconds']:.0f} tok/s, TTFT p50 "
                  f"{statistics.median(result['ttft']) * 1e3:.0f} ms", flush=True)
    return samples


def summarize(samples: dict, streams: int, tokens: int, load: tuple, output_filter: bool = True) -> dict:
    paths = {}
    for path, bursts in samples.items():
        ttft = sorted(t for b in bursts for t in b["ttft"])
        paths[path] = {"throughput_tok_s": statistics.median(b["tokens"] / b["seconds"] for b in bursts),
                       "ttft_p50_s": ttft[len(ttft) // 2], "ttft_p90_s": ttft[int(0.9 * len(ttft))],
                       "tokens_per_burst": [b["tokens"] for b in bursts]}
    compared = {p: {"throughput_ratio": paths[f"on/{p}"]["throughput_tok_s"] / paths[f"off/{p}"]["throughput_tok_s"],
                    "ttft_p50_added_ms": (paths[f"on/{p}"]["ttft_p50_s"] - paths[f"off/{p}"]["ttft_p50_s"]) * 1e3}
                for p in PROTOCOLS}
    return {
        "bench": "safety", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "ray": ray.__version__, "grpcio": grpc.__version__, "load_average_1m_before_after": load},
        "workload": f"{streams} concurrent streamed chats x {tokens} output tokens (ignore_eos), per burst; "
                    f"{len(next(iter(samples.values())))} bursts per app and protocol, interleaved",
        "on": "named key with quotas (ledger asked on every admission), audit log (JSONL), regex/PII filter on "
              + ("input and output (every_tokens 16)" if output_filter else "input only (no output windows)"),
        "paths": paths, "on_vs_off": compared, "targets": TARGETS,
        "meets_targets": all(c["throughput_ratio"] >= TARGETS["throughput_ratio_min"]
                             and c["ttft_p50_added_ms"] <= TARGETS["ttft_p50_added_ms_max"]
                             for c in compared.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=".cache/tiny-model")
    parser.add_argument("--no-output-filter", dest="output_filter", action="store_false",
                        help="the filter on input only: no output windows, so TTFT shows the admission path's cost "
                             "alone (writes safety_admission.json)")
    args = parser.parse_args()
    from tests.cluster.conftest import free_port  # noqa: PLC0415 - the same helper the tests use

    http_port, grpc_ports = free_port(), {name: free_port() for name in APPS}
    audit_dir = tempfile.mkdtemp(prefix="gptoss-bench-audit-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="/tmp/gpts"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, proxy_location="HeadOnly")
        for name in APPS:
            config = load_config(app_config(name, args.model, args.streams, grpc_ports[name], audit_dir,
                                            args.output_filter))
            serve.run(build_from_config(config), name=name, route_prefix=f"/{name}")
        before = os.getloadavg()[0]
        samples = asyncio.run(measure(http_port, grpc_ports, args.streams, args.tokens, args.rounds))
        load = (round(before, 2), round(os.getloadavg()[0], 2))
    finally:
        serve.shutdown()
        ray.shutdown()
    records = sum(len(f.read_text().splitlines()) for f in Path(audit_dir).glob("audit-*.jsonl"))
    result = summarize(samples, args.streams, args.tokens, load, args.output_filter)
    result["audit_records_written"] = records
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("safety.json" if args.output_filter else "safety_admission.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for path, p in result["paths"].items():
        print(f"{path:9s} {p['throughput_tok_s']:8.0f} tok/s  TTFT p50 {p['ttft_p50_s'] * 1e3:7.1f} ms")
    for protocol, c in result["on_vs_off"].items():
        print(f"{protocol}: on/off throughput x{c['throughput_ratio']:.3f}, TTFT p50 {c['ttft_p50_added_ms']:+.1f} ms")
    print(f"targets (>= 0.95x throughput, <= +2 ms TTFT p50): {'met' if result['meets_targets'] else 'NOT met'}; "
          f"{records} audit records; wrote {out}")


if __name__ == "__main__":
    main()
