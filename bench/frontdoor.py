"""The front doors' cost under load: 64 concurrent streams through the HTTP API and through the gRPC gateway, against
the same workload sent straight to the LLM replica's Serve handle, in one run.

    python -m bench.frontdoor [--streams 64] [--tokens 64] [--rounds 3] [--model .cache/tiny-model]

One local Ray cluster, one LLMServer replica (the tiny model on CPU, a batch wide enough for every stream), the
Ingress and the GrpcGateway in front of it, as `make serve` deploys them. Each round runs the three paths one after
the other (rotating who goes first), each a burst of `--streams` concurrent streamed chats of `--tokens` output
tokens (ignore_eos, so every stream is the same length):
  direct  this process -> the replica's Serve handle (what both front doors call), SSE frames counted as they come
  http    the official openai client (AsyncOpenAI) -> Serve's HTTP proxy -> Ingress -> handle
  grpc    a grpc.aio client (Chat) -> GrpcGateway -> handle
Per path: output tokens per second over the burst (first request sent to last token) and TTFT quantiles; ratios
against direct. Targets: throughput >= 0.9x direct and p50 TTFT <= 1.2x direct on both paths. Writes
bench/results/frontdoor.json.
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

from cluster.app import build_from_config
from cluster.config import load_config
from cluster.grpc import codegen
from cluster.protocol import parse_chat, prefix_hashes, routing_text

RESULTS = Path(__file__).parent / "results"
PATHS = ("direct", "http", "grpc")
TARGETS = {"throughput_ratio_min": 0.9, "ttft_p50_ratio_max": 1.2}


def bench_config(model: str, streams: int, http_port: int, grpc_port: int) -> dict:
    engine = {"kv_cache_memory": 64 << 20, "max_model_len": 1024, "max_num_seqs": streams}
    return {"name": "frontdoor", "http": {"port": http_port}, "grpc": {"enabled": True, "port": grpc_port},
            "models": [{"name": "tiny", "path": str(Path(model).absolute()), "dtype": "float32", "device": "cpu",
                        "num_cpus": 1, "engine": engine}]}


def prompt(i: int) -> str:
    return f"Request {i}: tell me a story about the number {i}."


async def direct_stream(handle, i: int, tokens: int, t0: float) -> tuple[float, float, int]:
    """One streamed chat sent to the replica the way the front door sends it (its frames are SSE text)."""
    req = parse_chat({"model": "tiny", "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": tokens,
                      "stream": True, "ignore_eos": True}, int(time.time()))
    req.prefix_hashes = prefix_hashes(routing_text(req))
    req.received = time.time()
    req.deadline = req.received + 600
    first, count = None, 0
    async for item in handle.options(stream=True).generate.remote(req):
        if first is None and isinstance(item, str) and item.startswith("data: {") and json.loads(item[6:])["choices"]:
            first = time.monotonic() - t0  # the first chunk, as the http path counts it
    count = tokens  # ignore_eos: every stream runs to max_tokens (checked on the http path's usage)
    return first, time.monotonic() - t0, count


async def http_stream(client, i: int, tokens: int, t0: float) -> tuple[float, float, int]:
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": prompt(i)}], max_tokens=tokens, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    first, count = None, 0
    async for chunk in stream:
        if chunk.choices and first is None:
            first = time.monotonic() - t0
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    return first, time.monotonic() - t0, count


async def grpc_stream(stub, pb, i: int, tokens: int, t0: float, metadata=None) -> tuple[float, float, int]:
    request = pb.ChatRequest(model="tiny", messages=[pb.Message(role=pb.ROLE_USER, content=prompt(i))],
                             sampling=pb.SamplingParams(max_tokens=tokens, ignore_eos=True))
    first, count = None, 0
    async for message in stub.Chat(request, timeout=600, metadata=metadata):
        if message.token_ids and first is None:
            first = time.monotonic() - t0
        count += len(message.token_ids)
    return first, time.monotonic() - t0, count


async def burst(path: str, clients: dict, streams: int, tokens: int) -> dict:
    t0 = time.monotonic()
    if path == "direct":
        runs = [direct_stream(clients["handle"], i, tokens, t0) for i in range(streams)]
    elif path == "http":
        runs = [http_stream(clients["openai"], i, tokens, t0) for i in range(streams)]
    else:
        runs = [grpc_stream(clients["stub"], clients["pb"], i, tokens, t0) for i in range(streams)]
    results = await asyncio.gather(*runs)
    wall = max(r[1] for r in results)
    return {"tokens": sum(r[2] for r in results), "seconds": wall, "ttft": [r[0] for r in results]}


async def measure(http_port: int, grpc_port: int, streams: int, tokens: int, rounds: int) -> dict:
    stubs = codegen.stubs()
    clients = {"handle": serve.get_deployment_handle("LLMServer:tiny", app_name="frontdoor"),
               "openai": openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused",
                                            max_retries=0, timeout=600,
                                            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=500))),
               "stub": stubs.grpc.InferenceStub(grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")),
               "pb": stubs.pb}
    for path in PATHS:  # warm-up: connections, the router's view of the replica, the engine's first steps
        await burst(path, clients, 8, 8)
    samples = {p: [] for p in PATHS}
    for r in range(rounds):
        for path in PATHS[r % 3:] + PATHS[:r % 3]:
            samples[path].append(await burst(path, clients, streams, tokens))
            print(f"  round {r + 1} {path}: {samples[path][-1]['tokens'] / samples[path][-1]['seconds']:.0f} tok/s",
                  flush=True)
    return samples


def summarize(samples: dict, streams: int, tokens: int, load: tuple) -> dict:
    paths = {}
    for path, bursts in samples.items():
        ttft = sorted(t for b in bursts for t in b["ttft"])
        paths[path] = {"throughput_tok_s": statistics.median(b["tokens"] / b["seconds"] for b in bursts),
                       "ttft_p50_s": ttft[len(ttft) // 2], "ttft_p90_s": ttft[int(0.9 * len(ttft))],
                       "tokens_per_burst": [b["tokens"] for b in bursts]}
    direct = paths["direct"]
    ratios = {p: {"throughput": paths[p]["throughput_tok_s"] / direct["throughput_tok_s"],
                  "ttft_p50": paths[p]["ttft_p50_s"] / direct["ttft_p50_s"]} for p in PATHS[1:]}
    return {
        "bench": "frontdoor", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "ray": ray.__version__, "grpcio": grpc.__version__, "load_average_1m_before_after": load},
        "workload": f"{streams} concurrent streamed chats x {tokens} output tokens (ignore_eos), per burst; "
                    f"{len(samples['direct'])} bursts per path, interleaved",
        "paths": paths, "ratios_vs_direct": ratios, "targets": TARGETS,
        "meets_targets": all(r["throughput"] >= TARGETS["throughput_ratio_min"]
                             and r["ttft_p50"] <= TARGETS["ttft_p50_ratio_max"] for r in ratios.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=".cache/tiny-model")
    args = parser.parse_args()
    from tests.cluster.conftest import free_port  # noqa: PLC0415 - the same helper the tests use

    http_port, grpc_port = free_port(), free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="/tmp/gptf"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, proxy_location="HeadOnly")
        config = load_config(bench_config(args.model, args.streams, http_port, grpc_port))
        serve.run(build_from_config(config), name="frontdoor", route_prefix="/")
        before = os.getloadavg()[0]
        samples = asyncio.run(measure(http_port, grpc_port, args.streams, args.tokens, args.rounds))
        load = (round(before, 2), round(os.getloadavg()[0], 2))
    finally:
        serve.shutdown()
        ray.shutdown()
    result = summarize(samples, args.streams, args.tokens, load)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "frontdoor.json").write_text(json.dumps(result, indent=2) + "\n")
    for path in PATHS:
        p = result["paths"][path]
        ratio = "" if path == "direct" else (f"   x{result['ratios_vs_direct'][path]['throughput']:.2f} throughput, "
                                             f"x{result['ratios_vs_direct'][path]['ttft_p50']:.2f} TTFT p50")
        print(f"{path:7s} {p['throughput_tok_s']:8.0f} tok/s  TTFT p50 {p['ttft_p50_s'] * 1e3:7.1f} ms{ratio}")
    print(f"targets (>= 0.9x throughput, <= 1.2x TTFT p50): {'met' if result['meets_targets'] else 'NOT met'}; "
          f"wrote {RESULTS / 'frontdoor.json'}")


if __name__ == "__main__":
    main()
