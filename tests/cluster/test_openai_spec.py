"""The published OpenAI API as the contract, on the running application (tiny model, CPU): every out-of-spec value
gets a 400 naming the field, every spec-valid null is accepted, unsupported features are refused by name, and the
response bodies validate against the models /openapi.json publishes.

Oracles: the OpenAI API reference's ranges (written out below), the official openai client, and
cluster.protocol.schemas (extra fields forbidden, so an undocumented field fails too).
"""

import json

import httpx
import openai
import pytest

from cluster.protocol import schemas
from tests.cluster.conftest import model_entry

CHAT = [{"role": "user", "content": "Say hello."}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


@pytest.fixture(scope="module")
def base(serve_app, tiny_model):
    return serve_app({"models": [model_entry("tiny", tiny_model, default_max_tokens=8)]}, "spec")


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def post(base: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base}{path}", content=json.dumps(body), headers={"Content-Type": "application/json"},
                      timeout=60)


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": CHAT, "max_tokens": 4, **fields}


def completion(**fields) -> dict:
    return {"model": "tiny", "prompt": "Hello", "max_tokens": 4, **fields}


def response(**fields) -> dict:
    return {"model": "tiny", "input": "Hello", "max_output_tokens": 4, **fields}


# (id, path, body, the field the 400 must name) - ranges and types from the OpenAI API reference
OUT_OF_SPEC = [
    ("temperature above 2", "/v1/chat/completions", chat(temperature=2.5), "temperature"),
    ("temperature huge", "/v1/chat/completions", chat(temperature=1e9), "temperature"),
    ("temperature negative", "/v1/chat/completions", chat(temperature=-0.1), "temperature"),
    ("top_p above 1", "/v1/chat/completions", chat(top_p=1.01), "top_p"),
    ("n zero", "/v1/chat/completions", chat(n=0), "n"),
    ("n above 128", "/v1/chat/completions", chat(n=129), "n"),
    ("presence_penalty", "/v1/chat/completions", chat(presence_penalty=2.5), "presence_penalty"),
    ("frequency_penalty", "/v1/chat/completions", chat(frequency_penalty=-2.01), "frequency_penalty"),
    ("five stop strings", "/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("1000 stop strings", "/v1/chat/completions", chat(stop=["x"] * 1000), "stop"),
    ("stop not a string", "/v1/chat/completions", chat(stop=5), "stop"),
    ("seed beyond int64", "/v1/chat/completions", chat(seed=2 ** 70), "seed"),
    ("logit_bias above 100", "/v1/chat/completions", chat(logit_bias={"5": 101}), "logit_bias"),
    ("max_tokens not an integer", "/v1/chat/completions", chat(max_tokens=1.5), "max_tokens"),
    ("stream not a boolean", "/v1/chat/completions", chat(stream="yes"), "stream"),
    ("reasoning_effort unknown", "/v1/chat/completions", chat(reasoning_effort="max"), "reasoning_effort"),
    ("tool parameters not a schema", "/v1/chat/completions",
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]),
     "tools[0].function.parameters.type"),
    ("tool name with spaces", "/v1/chat/completions",
     chat(tools=[{"type": "function", "function": {"name": "get weather"}}]), "tools[0].function.name"),
    ("tool_choice unknown", "/v1/chat/completions", chat(tools=[TOOL], tool_choice="sometimes"), "tool_choice"),
    ("message role unknown", "/v1/chat/completions", chat(messages=[{"role": "robot", "content": "x"}]),
     "messages[0].role"),
    ("message content not text", "/v1/chat/completions",
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
     "messages[0].content[0].type"),
    ("tool message without id", "/v1/chat/completions", chat(messages=[{"role": "tool", "content": "x"}]),
     "messages[0].tool_call_id"),
    ("response_format type", "/v1/chat/completions", chat(response_format={"type": "xml"}), "response_format.type"),
    ("metadata value too long", "/v1/chat/completions", chat(metadata={"k": "v" * 513}), "metadata.k"),
    ("completions logprobs above 5", "/v1/completions", completion(logprobs=6), "logprobs"),
    ("completions temperature", "/v1/completions", completion(temperature=3), "temperature"),
    ("completions best_of", "/v1/completions", completion(best_of=2), "best_of"),
    ("completions prompt type", "/v1/completions", completion(prompt={"text": "x"}), "prompt"),
    ("responses temperature", "/v1/responses", response(temperature=2.5), "temperature"),
    ("responses top_p", "/v1/responses", response(top_p=2), "top_p"),
    ("responses max_output_tokens", "/v1/responses", response(max_output_tokens=0), "max_output_tokens"),
    ("responses reasoning effort", "/v1/responses", response(reasoning={"effort": "max"}), "reasoning.effort"),
    ("responses item type", "/v1/responses", response(input=[{"type": "wat"}]), "input[0].type"),
    ("responses tool_choice", "/v1/responses", response(tool_choice="maybe"), "tool_choice"),
]


@pytest.mark.parametrize("path,body,field", [c[1:] for c in OUT_OF_SPEC], ids=[c[0] for c in OUT_OF_SPEC])
def test_out_of_spec_values_get_a_400_naming_the_field(base, path, body, field):
    resp = post(base, path, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and error["message"].startswith(field), error
    schemas.ErrorBody.model_validate(resp.json())


UNSUPPORTED = [
    ("/v1/chat/completions", chat(audio={"voice": "alloy", "format": "wav"}), "audio"),
    ("/v1/chat/completions", chat(store=True), "store"),
    ("/v1/chat/completions", chat(functions=[{"name": "f"}]), "functions"),
    ("/v1/chat/completions", chat(stream=True, stream_options={"include_obfuscation": True}),
     "stream_options.include_obfuscation"),
    ("/v1/chat/completions", chat(tools=[{**TOOL, "function": {**TOOL["function"], "strict": True}}]),
     "tools[0].function.strict"),
    ("/v1/chat/completions", chat(bogus=1), "bogus"),
    ("/v1/completions", completion(echo=True), "echo"),
    ("/v1/completions", completion(suffix="end"), "suffix"),
    ("/v1/responses", response(tools=[{"type": "web_search_preview"}]), "tools[0].type"),  # no search backend
    ("/v1/responses", response(tools=[{"type": "file_search"}]), "tools[0].type"),
    ("/v1/responses", response(include=["reasoning.encrypted_content"]), "include[0]"),
    ("/v1/responses", response(truncation="auto"), "truncation"),
]


@pytest.mark.parametrize("path,body,field", UNSUPPORTED, ids=[u[2] for u in UNSUPPORTED])
def test_unsupported_features_are_refused_by_name(base, path, body, field):
    resp = post(base, path, body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == field, resp.text


NULLABLE = {
    "/v1/chat/completions": chat(temperature=None, top_p=None, n=None, seed=None, stop=None, presence_penalty=None,
                                 frequency_penalty=None, logit_bias=None, stream=None, stream_options=None,
                                 max_completion_tokens=None, tools=None, tool_choice=None, parallel_tool_calls=None,
                                 reasoning_effort=None, response_format=None, metadata=None, user=None,
                                 logprobs=None, top_logprobs=None, store=None, audio=None, service_tier=None,
                                 prediction=None, modalities=None, safety_identifier=None, prompt_cache_key=None,
                                 verbosity=None, web_search_options=None),
    "/v1/completions": completion(temperature=None, top_p=None, n=None, seed=None, stop=None, stream=None,
                                  stream_options=None, presence_penalty=None, frequency_penalty=None,
                                  logit_bias=None, logprobs=None, best_of=None, echo=None, suffix=None, user=None),
    "/v1/responses": response(instructions=None, temperature=None, top_p=None, reasoning=None, tools=None,
                              tool_choice=None, parallel_tool_calls=None, text=None, stream=None, metadata=None,
                              store=None, previous_response_id=None, background=None, include=None, user=None,
                              truncation=None, max_tool_calls=None, service_tier=None),
}


@pytest.mark.parametrize("path", NULLABLE)
def test_spec_valid_nulls_are_accepted(base, path):
    resp = post(base, path, NULLABLE[path])
    assert resp.status_code == 200, resp.text


def test_bodies_validate_against_the_published_models(base, client):
    body = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0).model_dump(
        exclude_unset=True)
    out = schemas.ChatCompletion.model_validate(post(base, "/v1/chat/completions", chat()).json())
    assert out.choices[0].message.refusal is None and body["choices"][0]["message"]["refusal"] is None
    schemas.Completion.model_validate(post(base, "/v1/completions", completion(logprobs=2)).json())
    schemas.ModelList.model_validate(httpx.get(f"{base}/v1/models", timeout=10).json())
    schemas.ErrorBody.model_validate(post(base, "/v1/chat/completions", chat(model="nope")).json())


def test_responses_echo_what_was_sent(client):
    out = client.responses.create(model="tiny", input="Weather in Paris?", instructions="Be brief.",
                                  tools=[{"type": "function", "name": "get_weather", "parameters":
                                          TOOL["function"]["parameters"]}], tool_choice="required",
                                  metadata={"ticket": "42"}, max_output_tokens=6, temperature=0.5,
                                  parallel_tool_calls=False)
    schemas.Response.model_validate(out.model_dump(exclude_unset=True))
    assert (out.instructions, out.metadata, out.tool_choice, out.temperature, out.parallel_tool_calls) == \
        ("Be brief.", {"ticket": "42"}, "required", 0.5, False)
    assert [t.name for t in out.tools] == ["get_weather"] and out.max_output_tokens == 6
    assert out.store is True and out.background is False and out.reasoning.effort == "medium"  # store: the default


def test_openapi_json_publishes_the_ranges(base):
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    assert set(spec["paths"]) >= {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models"}
    components = spec["components"]["schemas"]
    ranges = components["ChatRequest"]["properties"]["temperature"]["anyOf"][0]
    assert (ranges["minimum"], ranges["maximum"]) == (0, 2)
    assert components["ChatRequest"]["additionalProperties"] is False
    assert set(spec["paths"]["/v1/chat/completions"]["post"]["responses"]) >= {"200", "400", "404", "503"}
