"""Fixtures for the trained model's end-to-end tests: the committed tiny harmony model served by the real cluster.

`harmony_app` deploys it (model "tiny", the make-serve engine settings, the gRPC gateway on) on the session's local
Ray cluster: the one tests/cluster's or tests/grpc's fixtures started if they ran first, else one started here.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.conftest import GATEWAY_RESOURCE, free_port, model_entry, wait_healthy
from tests.grpc.conftest import App, deploy, stubs  # noqa: F401 - stubs: the generated modules' fixture

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny-harmony"


@dataclass
class HarmonyApp:
    base: str  # HTTP base URL of the app (OpenAI API under /v1)
    grpc: App  # the app's gRPC gateway and stubs


@pytest.fixture(scope="session")
def serve_url():
    """Serve's HTTP root on the session's Ray cluster (reused when another test package started it)."""
    ray = pytest.importorskip("ray")
    from ray import serve
    from ray.serve.context import _get_global_client

    if ray.is_initialized():  # another package's session cluster (its fixture shuts it down)
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
def harmony_app(serve_url, stubs):
    from ray import serve

    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip(f"{MODEL_DIR} is not there: `make tiny-harmony` trains it")

    name = "harmony"
    entry = model_entry("tiny", MODEL_DIR, default_max_tokens=256, num_cpus=1,
                        engine={"kv_cache_memory": 64 << 20, "max_model_len": 4096, "max_num_seqs": 32})
    app = deploy(name, {"models": [entry], "http": {"route_prefix": f"/{name}"}}, stubs)
    base = f"{serve_url}/{name}"
    wait_healthy(base)
    yield HarmonyApp(base, app)
    serve.delete(name)


@pytest.fixture(scope="session")
def client(harmony_app):
    import openai

    return openai.OpenAI(base_url=f"{harmony_app.base}/v1", api_key="unused", max_retries=0, timeout=300)
