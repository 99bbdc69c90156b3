"""Fixtures for the trained model's end-to-end tests: the committed tiny harmony model served by the real cluster.

`harmony_app` deploys it (model "tiny", the make-serve defaults, the gRPC gateway on) on the session's local Ray
cluster: the one tests/cluster's fixtures started if they ran first, else one started here (as tests/grpc does).
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.conftest import GATEWAY_RESOURCE, free_port, model_entry, wait_healthy
from tests.grpc.conftest import wait_serving

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny-harmony"


@dataclass
class HarmonyApp:
    base: str  # HTTP base URL of the app (OpenAI API under /v1)
    grpc_port: int  # the app's gRPC gateway
    stubs: object  # the generated gRPC modules


@pytest.fixture(scope="session")
def serve_url():
    """Serve's HTTP root on the session's Ray cluster (reused when another test package started it)."""
    ray = pytest.importorskip("ray")
    from ray import serve
    from ray.serve.context import _get_global_client

    if ray.is_initialized():  # tests/cluster's session cluster (its fixture shuts it down)
        yield _get_global_client().root_url.rstrip("/")
        return
    port = free_port()
    ray.init(address="local", num_cpus=2, resources={GATEWAY_RESOURCE: 1}, include_dashboard=False,
             log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="/tmp/gptr"))
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def harmony_app(serve_url):
    from ray import serve

    from cluster.app import build_from_config
    from cluster.config import load_config
    from cluster.grpc import codegen

    name, port = "harmony", free_port()
    entry = model_entry("tiny", MODEL_DIR, default_max_tokens=256, num_cpus=1,
                        engine={"kv_cache_memory": 64 << 20, "max_model_len": 4096, "max_num_seqs": 16})
    config = {"models": [entry], "name": name, "http": {"route_prefix": f"/{name}"},
              "grpc": {"enabled": True, "port": port}}
    serve.run(build_from_config(load_config(config)), name=name, route_prefix=f"/{name}")
    base = f"{serve_url}/{name}"
    wait_healthy(base)
    codegen.generate()
    stubs = codegen.stubs()
    import grpc

    wait_serving(grpc.insecure_channel(f"127.0.0.1:{port}"), stubs)
    yield HarmonyApp(base, port, stubs)
    serve.delete(name)


@pytest.fixture(scope="session")
def client(harmony_app):
    import openai

    return openai.OpenAI(base_url=f"{harmony_app.base}/v1", api_key="unused", max_retries=0, timeout=120)
