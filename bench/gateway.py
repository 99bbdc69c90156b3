"""The gRPC gateway's own cost: time to first token through it minus the same request sent straight to the engine's
replica, in one run; and the same through Ray Serve's own gRPC proxy running our servicer (the alternative design).

    python -m bench.gateway [--requests 1000] [--model .cache/tiny-model]

One local Ray cluster, one LLMServer replica (the tiny model on CPU) behind three paths, measured interleaved so
that drift in the engine's speed hits all three alike:
  direct       this process -> the replica's Serve handle (what the gateway itself calls), first token item
  gateway      grpc.aio client -> the GrpcGateway deployment (standalone grpc.aio server, API key checked) -> handle
  serve-proxy  grpc.aio client -> Serve's gRPC proxy -> an ingress replica running InferenceServicer -> handle
Every request is the same Generate (a short prompt, max_tokens 1, greedy). The cost of a path is its TTFT quantile
minus direct's; the paired per-request differences are reported too. Writes bench/results/gateway.json.
Note: Serve's gRPC proxy binds [::]:PORT (every interface) with no TLS option; this bench starts it for its run.
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
import ray
from ray import serve

from cluster.app import ServeModelClient, build_from_config
from cluster.config import load_config
from cluster.frontdoor import FrontDoor
from cluster.grpc import codegen, convert
from cluster.grpc.auth import ApiKeys
from cluster.grpc.limits import Limits
from cluster.grpc.servicer import InferenceServicer
from cluster.output.deltas import SampleDelta
from cluster.protocol import prefix_hashes, routing_text

RESULTS = Path(__file__).parent / "results"
KEY = "bench-key-0123456789"
AUTH = (("authorization", f"Bearer {KEY}"),)
TARGETS_MS = {"p50": 2.0, "p99": 10.0}
PATHS = ("direct", "gateway", "serve-proxy")


class _ServeContext:
    """Our servicer's view of Ray Serve's RayServegRPCContext (which has no deadline, abort or initial metadata)."""

    def __init__(self, grpc_context):
        self.ctx = grpc_context

    def invocation_metadata(self):
        return self.ctx.invocation_metadata()

    def time_remaining(self):
        return None

    async def send_initial_metadata(self, metadata):
        pass

    async def abort(self, code, details, trailing=()):
        self.ctx.set_code(code)
        self.ctx.set_details(details)
        raise RuntimeError(details)


class ServeProxyIngress:
    """The alternative design: InferenceServicer as the ingress deployment behind Serve's gRPC proxy."""

    def __init__(self, config: dict, app_name: str):
        cfg = load_config(config)
        handles = {m.name: serve.get_deployment_handle(f"LLMServer:{m.name}", app_name=app_name) for m in cfg.models}
        door = FrontDoor(cfg, {n: ServeModelClient(h) for n, h in handles.items()})
        self.servicer = InferenceServicer(door, codegen.stubs().pb, ApiKeys(cfg.auth.resolve()), Limits(cfg.grpc))

    async def Generate(self, request, grpc_context):
        async for message in self.servicer.Generate(request, _ServeContext(grpc_context)):
            yield message


def bench_config(model: str, grpc_port: int) -> dict:
    engine = {"kv_cache_memory": 32 << 20, "max_model_len": 1024, "max_num_seqs": 16}
    return {"name": "bench", "models": [{"name": "tiny", "path": str(Path(model).absolute()), "dtype": "float32",
                                         "device": "cpu", "num_cpus": 1, "engine": engine}],
            "auth": {"api_keys": [KEY]}, "grpc": {"enabled": True, "port": grpc_port}}


async def ttft_direct(handle, pb_request) -> float:
    req = convert.to_generate(pb_request)
    req.prefix_hashes = prefix_hashes(routing_text(req))
    req.deadline = time.time() + 600
    start = time.perf_counter()
    stream = handle.options(stream=True).generate.remote(req)
    first = None
    async for item in stream:
        if first is None and isinstance(item, SampleDelta) and item.token_ids:
            first = time.perf_counter() - start
    return first


async def ttft_grpc(stub, pb_request, metadata) -> float:
    start = time.perf_counter()
    first = None
    async for message in stub.Generate(pb_request, metadata=metadata, timeout=60):
        if first is None and message.token_ids:
            first = time.perf_counter() - start
    return first


def quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5) * 1e3, "p90": pick(0.9) * 1e3, "p99": pick(0.99) * 1e3,
            "mean": statistics.fmean(ordered) * 1e3}


async def measure(handle, gateway_port: int, proxy_port: int, requests: int, pb) -> dict[str, list[float]]:
    stubs = codegen.stubs()
    gateway = stubs.grpc.InferenceStub(grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}"))
    proxy = stubs.grpc.InferenceStub(grpc.aio.insecure_channel(f"127.0.0.1:{proxy_port}"))
    request = pb.GenerateRequest(model="tiny", prompt="Hello, how are you today?",
                                 sampling=pb.SamplingParams(max_tokens=1, temperature=0))
    runs = {"direct": lambda: ttft_direct(handle, request),
            "gateway": lambda: ttft_grpc(gateway, request, AUTH),
            "serve-proxy": lambda: ttft_grpc(proxy, request, AUTH + (("application", "bench-proxy"),))}
    for _ in range(30):  # warm-up: connections, caches, the router's view of the replica
        for run in runs.values():
            await run()
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    for i in range(requests):
        order = PATHS[i % 3:] + PATHS[:i % 3]  # rotate who goes first
        for path in order:
            samples[path].append(await runs[path]())
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{requests}", flush=True)
    return samples


def report(samples: dict[str, list[float]], requests: int, load: tuple) -> dict:
    ttft = {p: quantiles(v) for p, v in samples.items()}
    cost = {p: {q: ttft[p][q] - ttft["direct"][q] for q in ("p50", "p90", "p99")} for p in PATHS[1:]}
    paired = {p: quantiles([a - b for a, b in zip(samples[p], samples["direct"])]) for p in PATHS[1:]}
    return {
        "bench": "gateway", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "grpcio": grpc.__version__, "ray": ray.__version__,
                    "load_average_1m_before_after": load},
        "requests_per_path": requests, "request": "Generate, 7-token prompt, max_tokens 1, greedy, API key",
        "ttft_ms": ttft, "cost_ms": cost, "paired_difference_ms": paired, "targets_ms": TARGETS_MS,
        "gateway_meets_targets": all(cost["gateway"][q] < t for q, t in TARGETS_MS.items()),
        "definition": "cost = TTFT quantile through the path minus the same quantile sent to the replica's Serve "
                      "handle directly (same run, interleaved); paired_difference = quantiles of per-request "
                      "differences (includes the engine's own step jitter)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--model", default=".cache/tiny-model")
    args = parser.parse_args()
    from tests.cluster.conftest import free_port  # noqa: PLC0415 - the same helper the tests use

    gateway_port, proxy_port = free_port(), free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="/tmp/gptb"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly",
                    grpc_options={"port": proxy_port,
                                  "grpc_servicer_functions": ["cluster.grpc.codegen:add_inference_servicer"]})
        config = bench_config(args.model, gateway_port)
        serve.run(build_from_config(load_config(config)), name="bench", route_prefix="/bench")
        proxy_app = serve.deployment(ServeProxyIngress, name="ServeProxyIngress",
                                     ray_actor_options={"num_cpus": 0}).bind(config, "bench")
        serve.run(proxy_app, name="bench-proxy", route_prefix="/bench-proxy")
        handle = serve.get_deployment_handle("LLMServer:tiny", app_name="bench")
        print(f"measuring {args.requests} requests per path ({', '.join(PATHS)}), interleaved ...", flush=True)
        before = os.getloadavg()[0]
        samples = asyncio.run(measure(handle, gateway_port, proxy_port, args.requests, codegen.stubs().pb))
        load = (round(before, 2), round(os.getloadavg()[0], 2))
    finally:
        serve.shutdown()
        ray.shutdown()
    result = report(samples, args.requests, load)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(result, indent=2) + "\n")
    for path in PATHS:
        t = result["ttft_ms"][path]
        extra = "" if path == "direct" else \
            f"   cost p50 {result['cost_ms'][path]['p50']:+.2f} ms  p99 {result['cost_ms'][path]['p99']:+.2f} ms"
        print(f"{path:12s} TTFT p50 {t['p50']:7.2f} ms  p99 {t['p99']:7.2f} ms{extra}")
    print(f"gateway targets (p50 < 2 ms, p99 < 10 ms): {'met' if result['gateway_meets_targets'] else 'NOT met'}; "
          f"wrote {RESULTS / 'gateway.json'}")


if __name__ == "__main__":
    main()
