"""The real engine in-process for the guard tests: one LLMServer (AsyncLLM on the tiny model) per module, and an
Ingress with the config under test in front of it, driven by the official openai client over ASGI."""

import httpx
import openai
import pytest

from cluster.config import ModelSpec, load_config, validate
from cluster.ingress import Ingress
from cluster.server import LLMServer
from tests.cluster.conftest import Local, model_entry

KEY = "guard-test-key-0123"


@pytest.fixture(scope="module")
def engine_server(tiny_model):
    entry = model_entry("tiny", tiny_model, num_cpus=1)
    server = LLMServer(validate(ModelSpec, entry, "model"), replica="r0")
    yield entry, server
    server.engine.shutdown()


@pytest.fixture
def front(engine_server, tmp_path):
    """front(config extras) -> (Ingress, openai.AsyncOpenAI with KEY)."""
    entry, server = engine_server

    def make(extra: dict | None = None):
        config = load_config({"models": [entry], "auth": {"api_keys": [KEY]},
                              "audit": {"dir": str(tmp_path / "audit")}, **(extra or {})})
        ingress = Ingress(config, {"tiny": Local(server)})
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.asgi_app), base_url="http://t")
        return ingress, openai.AsyncOpenAI(base_url="http://t/v1", api_key=KEY, http_client=http, max_retries=0)

    return make
