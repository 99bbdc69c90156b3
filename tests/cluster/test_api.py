"""End to end: the real application on a local Ray cluster (CPU, tiny model), driven by the official openai client.

Two models in one app: "tiny" (roomy limits) and "tiny-q" (engine queue of 1 waiting, 2 running) for overload.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from cluster.metrics import COUNTERS, GAUGES, HISTOGRAMS
from engine.text import vocab
from tests.cluster.conftest import API_KEY, has, model_entry, scrape, total

CHAT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def base(serve_app, tiny_model):
    config = {
        "models": [model_entry("tiny", tiny_model),
                   model_entry("tiny-q", tiny_model, engine={"kv_cache_memory": 32 << 20, "max_model_len": 1024,
                                                             "max_num_seqs": 2, "max_waiting_requests": 1})],
        "auth": {"api_keys": [API_KEY]},
        "limits": {"max_body_bytes": 65536, "request_timeout_s": 120},
    }
    return serve_app(config, "api")


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def post(base: str, path: str, body, key: str | None = API_KEY, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{base}{path}", content=content, headers=hdrs, timeout=60)


# -- the happy paths, through the openai client ----------------------------------------------------------------------


def test_models(client):
    assert sorted(m.id for m in client.models.list().data) == ["tiny", "tiny-q"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat(client):
    out = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason in ("length", "stop") and choice.message.role == "assistant"
    assert out.usage.completion_tokens == 12 and out.usage.prompt_tokens > 10
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # the prefix cache served the repeat


def test_ignore_eos_generates_past_the_end_of_the_turn(client):
    """logit_bias makes <|return|> certain: it ends the turn (finish "stop"), unless the ignore_eos extension says to
    go on (then max_tokens ends it), as it goes on past a completion's eos."""
    bias = {str(vocab.RETURN): 100}
    ended = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, logit_bias=bias)
    assert ended.choices[0].finish_reason == "stop" and ended.usage.completion_tokens == 1
    past = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, logit_bias=bias,
                                          extra_body={"ignore_eos": True})
    assert past.choices[0].finish_reason == "length" and past.usage.completion_tokens == 6


def test_chat_stream_with_usage(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    plain = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0)
    assert streamed == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "length"


def test_completions(client):
    out = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0,
                                    logprobs=2)
    assert out.usage.completion_tokens == 6 and out.choices[0].finish_reason == "length"
    assert len(out.choices[0].logprobs.tokens) == 6
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_responses(client):
    out = client.responses.create(model="tiny", input="Say hello.", max_output_tokens=10, temperature=0)
    assert out.status == "incomplete" and out.incomplete_details.reason == "max_output_tokens"
    assert out.usage.output_tokens == 10 and out.output_text
    events = list(client.responses.create(model="tiny", input="Say hello.", max_output_tokens=10, temperature=0,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == out.output_text


def test_concurrent_streams_all_complete(client):
    def one(i):
        chunks = list(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=24, stream=True,
            stream_options={"include_usage": True}, seed=i))
        return chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [24] * 8


# -- bad input: status and message naming the field ------------------------------------------------------------------

BAD = [
    ("invalid JSON", "/v1/chat/completions", b"{not json", 400, "body", "not valid JSON"),
    ("unknown model", "/v1/chat/completions", {"model": "nope", "messages": CHAT}, 404, "model", "does not exist"),
    ("empty messages", "/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages", "at least 1 item"),
    ("missing messages", "/v1/chat/completions", {"model": "tiny"}, 400, "messages", "messages"),
    ("bad role", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role", "role"),
    ("temperature", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "temperature": -1}, 400,
     "temperature", "greater than or equal to 0"),
    ("top_p", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "top_p": 1.5}, 400, "top_p",
     "less than or equal to 1"),
    ("max_tokens type", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": "ten"}, 400,
     "max_tokens", "valid integer"),
    ("max_completion_tokens", "/v1/chat/completions", {"model": "tiny", "messages": CHAT,
                                                       "max_completion_tokens": 0}, 400,
     "max_completion_tokens", "greater than or equal to 1"),
    ("n", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "n": 99}, 400, "n", "less than or equal to 16"),
    ("prompt beyond context", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "word " * 1500}]}, 400, "messages", "context"),
    ("max_tokens beyond context", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 5000},
     400, "max_tokens", "max_model_len"),
    ("tool schema", "/v1/chat/completions",
     {"model": "tiny", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "f",
                                                                                     "parameters": "nope"}}]},
     400, "tools[0].function.parameters", "valid dictionary"),
    ("tool name", "/v1/chat/completions",
     {"model": "tiny", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     400, "tools[0].function.name", "should match pattern"),
    ("tool_choice unknown", "/v1/chat/completions",
     {"model": "tiny", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice", "not in tools"),
    ("stream_options without stream", "/v1/chat/completions",
     {"model": "tiny", "messages": CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("completion prompt beyond context", "/v1/completions", {"model": "tiny", "prompt": "word " * 1500}, 400,
     "prompt", "context"),
    ("completion prompt ids out of vocab", "/v1/completions", {"model": "tiny", "prompt": [1, 2, 10 ** 9]}, 400,
     "prompt", "prompt"),
    ("completion logprobs", "/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 50}, 400, "logprobs",
     "less than or equal to 5"),
    ("responses unknown previous id", "/v1/responses", {"model": "tiny", "input": "x",
                                                         "previous_response_id": "resp_1"},
     404, "previous_response_id", "No response"),
    ("responses empty input", "/v1/responses", {"model": "tiny", "input": []}, 400, "input", "non-empty"),
    ("responses max_output_tokens", "/v1/responses", {"model": "tiny", "input": "x", "max_output_tokens": 0},
     400, "max_output_tokens", "greater than or equal to 1"),
]


@pytest.mark.parametrize("path,body,status,param,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(base, path, body, status, param, words):
    resp = post(base, path, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


def test_bad_input_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[], max_tokens=4)
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)


def test_body_too_large(base):
    resp = post(base, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user",
                                                                              "content": "x" * 70000}]})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_api_keys(base):
    for path in ("/v1/models", "/metrics"):
        for key in (None, "wrong-key-0123456789"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            resp = httpx.get(f"{base}{path}", headers=headers, timeout=10)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert post(base, "/v1/chat/completions", {"model": "tiny", "messages": CHAT}, key="nope").status_code == 401
    assert post(base, "/v1/chat/completions", b"{not json", key=None).status_code == 401  # auth before parsing
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200  # the one open route
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()


def test_deadline_gives_408(base):
    resp = post(base, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 900,
                                               "min_tokens": 900, "ignore_eos": True},
                headers={"X-Request-Timeout": "0.3"})
    assert resp.status_code == 408 and resp.json()["error"]["code"] == "request_timeout"


def test_overload_gives_429_and_drops_nothing_accepted(base):
    """tiny-q runs 2 and queues 1: of 10 concurrent long requests some get 429; every accepted one completes."""
    body = {"model": "tiny-q", "messages": CHAT, "max_tokens": 48, "temperature": 0}

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: post(base, "/v1/chat/completions", body), range(10)))
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {200, 429, 503} and 429 in statuses and 200 in statuses, statuses
    for r in results:
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] == 48
        else:
            assert r.headers["Retry-After"] == "1" and r.json()["error"]["type"] in ("rate_limit_error",
                                                                                     "server_error")


def _wait_metrics(base, check, timeout=15.0):
    end = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if check(samples) or time.monotonic() > end:
            return samples
        time.sleep(0.25)


def test_disconnect_aborts_and_frees_blocks(base, client):
    labels = {"model_name": "tiny"}
    before = scrape(base)
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=900, stream=True,
                                            extra_body={"min_tokens": 900, "ignore_eos": True})
    for _, _chunk in zip(range(5), stream):
        pass
    busy = _wait_metrics(base, lambda s: total(s, "gptoss_kv_cache_usage_perc", **labels) > 0)
    assert total(busy, "gptoss_num_requests_running", **labels) >= 1
    stream.close()  # the client goes away mid-stream
    after = _wait_metrics(base, lambda s: total(s, "gptoss_request_success_total", finished_reason="abort",
                                                **labels) > total(before, "gptoss_request_success_total",
                                                                  finished_reason="abort", **labels)
                          and total(s, "gptoss_kv_cache_usage_perc", **labels) == 0)
    assert total(after, "gptoss_kv_cache_usage_perc", **labels) == 0
    assert total(after, "gptoss_num_requests_running", **labels) == 0
    assert total(after, "gptoss_request_success_total", finished_reason="abort", **labels) == \
        total(before, "gptoss_request_success_total", finished_reason="abort", **labels) + 1
    assert total(after, "gptoss_generation_tokens_total", **labels) < \
        total(before, "gptoss_generation_tokens_total", **labels) + 900  # it did not run to the end


def test_metrics_exist_and_move(base, client):
    labels = {"model_name": "tiny"}
    before = scrape(base)
    prompt = [{"role": "user", "content": "A shared prefix for the cache. " * 8}]
    for _ in range(2):
        client.chat.completions.create(model="tiny", messages=prompt, max_tokens=8, temperature=0)
    list(client.chat.completions.create(model="tiny", messages=prompt, max_tokens=8, stream=True))

    def moved(s):
        return total(s, "gptoss_request_success_total", **labels) >= total(
            before, "gptoss_request_success_total", **labels) + 3

    after = _wait_metrics(base, moved)
    for name in GAUGES:
        assert has(after, name), name
        assert 0 <= total(after, name, **labels) <= (1 if name.endswith("perc") else 1e9)
    grew = ["gptoss_prefix_cache_queries_total", "gptoss_prefix_cache_hits_total", "gptoss_prompt_tokens_total",
            "gptoss_generation_tokens_total", "gptoss_request_success_total"]
    for name in COUNTERS:
        assert has(after, name), name
        assert total(after, name, **labels) >= total(before, name, **labels), name
    for name in grew:
        assert total(after, name, **labels) > total(before, name, **labels), name
    assert total(after, "gptoss_generation_tokens_total", **labels) >= \
        total(before, "gptoss_generation_tokens_total", **labels) + 24
    for name in HISTOGRAMS:
        for suffix in ("_bucket", "_sum", "_count"):
            assert has(after, name + suffix), name + suffix
        assert total(after, name + "_count", **labels) > total(before, name + "_count", **labels), name
    replica_labels = {dict(lab).get("replica") for (n, lab) in after if n == "gptoss_num_requests_running"}
    assert None not in replica_labels and replica_labels
    assert total(after, "gptoss_http_requests_total", status_code="200") > 0
