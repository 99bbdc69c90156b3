"""Stored conversations outlive the processes that made them (slow: each test deploys applications).

- SQLite: the application is deleted (every ingress and LLM replica stops) and deployed again on the same file; the
  conversation goes on through previous_response_id, and a background response that was running when it stopped
  reads as failed once its claim lapses.
- PostgreSQL (a real server started here and stopped after): two applications, each with its own ingress and
  replicas, share one database: a conversation started on one is continued, read and deleted on the other, and a
  background response running on one is cancelled from the other (the flag travels through the store).
"""

import time

import openai
import pytest

from tests.cluster.conftest import model_entry
from tests.responses import postgres

pytestmark = pytest.mark.slow
KEY = "key-store-0123456789"


def client_of(base: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def config(tiny_model, responses: dict) -> dict:
    return {"models": [model_entry("tiny", tiny_model, default_max_tokens=8)], "auth": {"api_keys": [KEY]},
            "responses": {"background_lease_s": 2, **responses}}


def create(client, **fields):
    return client.responses.create(**{"model": "tiny", "max_output_tokens": 6, "temperature": 0, **fields})


def wait(client, response_id: str, timeout: float = 60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = client.responses.retrieve(response_id)
        if out.status not in ("queued", "in_progress"):
            return out
        time.sleep(0.2)
    raise TimeoutError(response_id)


def test_a_conversation_survives_a_restart_of_the_application(serve_app, tiny_model, tmp_path):
    from ray import serve

    cfg = config(tiny_model, {"store_path": str(tmp_path / "responses.sqlite3")})
    base = serve_app(cfg, "restart")
    first = create(client_of(base), input="Remember me.")
    running = create(client_of(base), input="Long.", background=True, max_output_tokens=900)
    serve.delete("restart")  # every replica of the application stops
    base = serve_app(cfg, "restart")
    client = client_of(base)
    assert client.responses.retrieve(first.id).output[0].model_dump() == first.output[0].model_dump()
    second = create(client, input="Do you?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.usage.input_tokens > first.usage.input_tokens
    lost = wait(client, running.id, timeout=30)
    assert lost.status == "failed" and "stopped before it finished" in lost.error.message


@pytest.fixture(scope="module")
def pg_dsn():
    if not postgres.available():
        pytest.fail("PostgreSQL 15 is not installed at /usr/lib/postgresql/15/bin (.ci/run installs it)")
    with postgres.postgres_server() as dsn:
        yield dsn


def test_two_applications_share_conversations_through_postgresql(serve_app, tiny_model, pg_dsn):
    cfg = config(tiny_model, {"store_dsn": pg_dsn})  # (store_dsn_env, the chart's way, resolves to the same string)
    a, b = client_of(serve_app(cfg, "pg-a")), client_of(serve_app(cfg, "pg-b"))
    first = create(a, input="Started on A.")
    second = create(b, input="Continued on B.", previous_response_id=first.id)
    assert b.responses.retrieve(first.id).id == first.id and a.responses.retrieve(second.id).id == second.id
    assert [i.content[0].text for i in a.responses.input_items.list(second.id).data] == ["Continued on B."]
    running = create(a, input="Long.", background=True, max_output_tokens=900)
    cancelled = b.responses.cancel(running.id)  # runs on A; B sets the flag, A's watcher sees it
    assert cancelled.status == "cancelled" and a.responses.retrieve(running.id).status == "cancelled"
    b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        create(a, input="Again.", previous_response_id=second.id)  # the chain lost its first link
