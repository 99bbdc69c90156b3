"""The HTTP layer in-process, over a scripted engine (the one place a fake engine is used: error mapping, health,
headers; the real engine is exercised end to end in test_api.py)."""

import asyncio
from dataclasses import dataclass

import httpx
import pytest

from cluster.config import load_config
from cluster.ingress import Ingress
from cluster.server import LLMServer
from engine.async_llm import QueueFullError
from engine.outputs import CompletionOutput, RequestOutput
from engine.text.tokenizer import Tokenizer
from tests.cluster.conftest import Local


@dataclass
class Stats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0


class ScriptedEngine:
    """AsyncLLM's contract: yields one token per step; `full` makes admission fail like a full queue."""

    def __init__(self, tokenizer, **_):
        self.tokenizer, self.max_model_len, self.healthy = tokenizer, 512, True
        self.max_tokens_per_sequence = 512
        self.full, self.closed = False, []

    async def generate(self, prompt, params, request_id=None):
        if self.full:
            raise QueueFullError("waiting queue is full (1 requests)")
        try:
            for i in range(params.max_tokens):
                await asyncio.sleep(0.01)
                last = i == params.max_tokens - 1
                yield RequestOutput(request_id, None, prompt["prompt_token_ids"],
                                    [CompletionOutput(0, [1000 + i], "x", None, "length" if last else None)],
                                    finished=last)
        finally:
            self.closed.append(request_id)

    def stats(self):
        return Stats()

    def shutdown(self):
        pass


@pytest.fixture
def setup(tiny_model):
    config = load_config({"models": [{"name": "m", "path": str(tiny_model)}],
                          "auth": {"api_keys": ["k-0123456789", "k-abcdefghij"]},
                          "limits": {"retry_after_s": 3, "request_timeout_s": 30}})
    tok = Tokenizer.load(tiny_model)
    server = LLMServer(config.models[0], engine_factory=lambda **kw: ScriptedEngine(tok, **kw), replica="r0")
    ingress = Ingress(config, {"m": Local(server)})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.asgi_app), base_url="http://t",
                               headers={"Authorization": "Bearer k-abcdefghij"})
    return server.engine, client


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_any_configured_key_works_and_queue_full_is_429(setup):
    engine, client = setup

    async def go():
        ok = await client.post("/v1/chat/completions", json=CHAT)
        engine.full = True
        full = await client.post("/v1/chat/completions", json=CHAT)
        return ok, full

    ok, full = asyncio.run(go())
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    assert full.status_code == 429 and full.headers["retry-after"] == "3"
    assert full.json()["error"]["code"] == "rate_limit_exceeded"


def test_timeout_header_validated_and_applied(setup):
    engine, client = setup

    async def go():
        bad = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Timeout": "soon"})
        slow = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200},
                                 headers={"X-Request-Timeout": "0.2"})
        await asyncio.sleep(0.05)
        return bad, slow

    bad, slow = asyncio.run(go())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-request-timeout"
    assert slow.status_code == 408
    assert engine.closed  # the timed-out request's engine stream was closed (aborted)


def test_health_reflects_the_engine(setup):
    engine, client = setup

    async def go():
        up = await client.get("/health", headers={"Authorization": ""})
        engine.healthy = False
        down = await client.get("/health")
        return up, down

    up, down = asyncio.run(go())
    assert up.status_code == 200 and up.json()["models"] == {"m": "ok"}
    assert down.status_code == 503 and down.json()["models"] == {"m": "unhealthy"}


def test_unknown_routes_and_methods_get_openai_error_bodies(setup):
    _, client = setup

    async def go():
        return await client.get("/v1/nothing"), await client.get("/v1/chat/completions")

    missing, wrong_method = asyncio.run(go())
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_an_unanswered_builtin_call_whose_tool_is_not_offered_fails_as_a_call_not_as_the_request(setup):
    _, client = setup  # found by schemathesis: it was a 500 (StopIteration looking for an MCP server "browser")
    body = {"model": "m", "max_output_tokens": 4,
            "input": [{"type": "web_search_call", "id": "ws_1", "action": {"type": "search", "query": "x"}}]}
    r = asyncio.run(client.post("/v1/responses", json=body))
    assert r.status_code == 200, r.text
    call = r.json()["output"][0]
    assert call["id"] == "ws_1" and call["status"] == "failed"
