"""Fixtures for the cluster tests: one small local Ray cluster per test session, one Serve app per module.

`serve_app(config_dict)` deploys an application on it (the real build_from_config: Ingress, LLMServer replicas
running AsyncLLM on the tiny model, the metrics hub) and returns its base URL; the app is deleted at module end.
"""

import socket
import tempfile
import time

import httpx
import pytest

from cluster.config import load_config

API_KEY = "test-key-0123456789"
GATEWAY_RESOURCE = "gptoss_grpc_gateway"  # the node resource the Helm chart gives the head pod for the gRPC gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_serve():
    """A local Ray cluster (2 CPUs, no dashboard) with Serve's HTTP proxy on a free 127.0.0.1 port."""
    ray = pytest.importorskip("ray")
    from ray import serve

    port = free_port()
    ray.init(address="local", num_cpus=2, resources={GATEWAY_RESOURCE: 1}, include_dashboard=False,
             log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="/tmp/gptr"))
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def model_entry(name: str, path: str, **overrides) -> dict:
    """A tiny CPU model entry with small KV cache and context (so context errors are cheap to provoke)."""
    entry = {"name": name, "path": str(path), "dtype": "float32", "device": "cpu", "num_cpus": 0.5,
             "engine": {"kv_cache_memory": 32 << 20, "max_model_len": 1024, "max_num_seqs": 16},
             "default_max_tokens": 64, "graceful_shutdown_timeout_s": 20, "health_check_period_s": 2}
    entry.update(overrides)
    return entry


@pytest.fixture(scope="module")
def serve_app(ray_serve, tmp_path_factory):
    from ray import serve

    from cluster.app import build_from_config

    names = []

    def deploy(config: dict, name: str) -> str:
        config = {**config, "name": name, "http": {"route_prefix": f"/{name}"}, "metrics_push_interval_s": 0.25}
        if "responses" not in config:  # stored responses in the test's temp dir, never in the user's cache
            config["responses"] = {"store_path": str(tmp_path_factory.mktemp("store") / "responses.sqlite3")}
        app_config = load_config(config)
        serve.run(build_from_config(app_config), name=name, route_prefix=f"/{name}")
        names.append(name)
        base = f"{ray_serve}/{name}"
        wait_healthy(base)
        return base

    yield deploy
    for name in names:
        serve.delete(name)


def wait_healthy(base: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base} did not become healthy in {timeout} s")


def scrape(base: str, key: str | None = API_KEY) -> dict[tuple, float]:
    """/metrics as {(sample name, frozenset(labels)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.get(f"{base}/metrics", headers=headers, timeout=10)
    resp.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def total(samples: dict, name: str, **labels) -> float:
    """Sum of a sample over every series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def has(samples: dict, name: str) -> bool:
    return any(n == name for n, _ in samples)


class Local:
    """A ModelClient over an LLMServer in this process."""

    def __init__(self, server):
        self.server = server

    def stream(self, req):
        return self.server.generate(req)

    async def health(self):
        await self.server.check_health()
        return True

    async def tokenize(self, req):
        return await self.server.tokenize(req)
