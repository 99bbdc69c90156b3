"""Structured outputs and enforced tool calls on a running cluster (tiny random model, CPU), through the official
openai client under concurrency. The model's tokens are random, so only the constraint can make them valid: every
answer must parse and validate (jsonschema), the reasoning must stay out of the JSON, tool_choice "required" / named
must give a call whose arguments validate, "none" none; chat logprobs come back (streamed too) for the answer's tokens.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest

from tests.cluster.conftest import model_entry
from tests.structured.schemas import SCHEMAS

MESSAGES = [{"role": "user", "content": "Reply in JSON."}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,7}$"},
                                            "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"],
           "additionalProperties": False}
LOOKUP = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}},
          "required": ["id"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "lookup", "description": "Find", "parameters": LOOKUP}}]


@pytest.fixture(scope="module")
def client(serve_app, tiny_model):
    base = serve_app({"models": [model_entry("tiny", tiny_model, default_max_tokens=160)]}, "structured")
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def fmt(i: int) -> dict:
    return {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i], "strict": True}}


def answer(client, i: int, seed: int):
    """(schema index, completion, reasoning budget): odd seeds set max_reasoning_tokens, even ones take the default
    (half of max_tokens)."""
    budget = 12 if seed % 2 else 80
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, response_format=fmt(i % len(SCHEMAS)),
                                         temperature=1.0, seed=seed, max_tokens=160,
                                         extra_body={"max_reasoning_tokens": 12} if seed % 2 else None)
    return i % len(SCHEMAS), out, budget


def check_answers(results) -> None:
    for i, out, budget in results:
        message = out.choices[0].message
        assert out.choices[0].finish_reason == "stop", out
        jsonschema.validate(json.loads(message.content), SCHEMAS[i])
        reasoning = getattr(message, "reasoning_content", None) or ""
        assert reasoning not in message.content or not reasoning
        assert out.usage.completion_tokens_details.reasoning_tokens <= budget


def run_concurrently(fn, count: int) -> list:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(fn, range(count)))


def test_every_schema_validates(client):
    check_answers(run_concurrently(lambda i: answer(client, i, seed=i), len(SCHEMAS)))


@pytest.mark.slow
def test_two_hundred_requests_over_twenty_schemas_all_validate(client):
    results = run_concurrently(lambda i: answer(client, i, seed=1000 + i), 200)
    check_answers(results)
    assert len({r[0] for r in results}) == 20


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(pattern="^[a-z]{1,8}$")
    age: int = pydantic.Field(ge=0, le=99)
    role: str = pydantic.Field(json_schema_extra={"enum": ["dev", "ops"]})


def test_openai_parse_gives_the_pydantic_object(client):
    out = client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=Person, temperature=1.0,
                                        seed=3, max_tokens=120)
    person = out.choices[0].message.parsed
    assert isinstance(person, Person) and person.role in ("dev", "ops")


def call(client, seed: int, tool_choice, tools=TOOLS, stream=False):
    return client.chat.completions.create(model="tiny", messages=MESSAGES, tools=tools, tool_choice=tool_choice,
                                          temperature=1.0, seed=seed, max_tokens=120, stream=stream,
                                          extra_body={"max_reasoning_tokens": 8})


def test_required_tool_choice_always_calls_with_valid_arguments(client):
    outs = run_concurrently(lambda i: call(client, i, "required"), 24)
    schemas = {"get_weather": WEATHER, "lookup": LOOKUP}
    for out in outs:
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        fn = choice.message.tool_calls[0].function
        jsonschema.validate(json.loads(fn.arguments), schemas[fn.name])
    assert {o.choices[0].message.tool_calls[0].function.name for o in outs} == set(schemas)


def test_named_tool_choice_calls_that_function_and_none_calls_nothing(client):
    named = {"type": "function", "function": {"name": "lookup"}}
    for seed in range(4):
        out = call(client, seed, named)
        fn = out.choices[0].message.tool_calls[0].function
        assert fn.name == "lookup"
        jsonschema.validate(json.loads(fn.arguments), LOOKUP)
        none = call(client, seed, "none")
        assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason in ("stop", "length")


def test_strict_tool_with_auto_choice_validates_when_called(client):
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    called = 0
    for out in run_concurrently(lambda seed: call(client, seed, "auto", tools), 24):
        for tc in out.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(tc.function.arguments), WEATHER)
            called += 1
    assert called >= 1


def test_streamed_required_tool_call_assembles_valid_arguments(client):
    args, names = "", set()
    for chunk in call(client, 5, "required", stream=True):
        for tc in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            args += tc.function.arguments or ""
            names.add(tc.function.name) if tc.function.name else None
    jsonschema.validate(json.loads(args), {"get_weather": WEATHER, "lookup": LOOKUP}[names.pop()])


def test_chat_logprobs_cover_the_answer_tokens_streamed_and_not(client):
    kw = dict(model="tiny", messages=MESSAGES, response_format=fmt(2), temperature=1.0, seed=9, max_tokens=120,
              logprobs=True, top_logprobs=3, extra_body={"max_reasoning_tokens": 6})
    out = client.chat.completions.create(**kw)
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in content)
    streamed = [t for chunk in client.chat.completions.create(**kw, stream=True)
                for t in (chunk.choices[0].logprobs.content if chunk.choices and chunk.choices[0].logprobs else [])]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_responses_text_format_validates(client):
    for seed in range(4):
        out = client.responses.create(model="tiny", input="Reply in JSON.", temperature=1.0, max_output_tokens=160,
                                      text={"format": {"type": "json_schema", "name": "s", "schema": SCHEMAS[seed],
                                                       "strict": True}})
        jsonschema.validate(json.loads(out.output_text), SCHEMAS[seed])
        assert out.text.format.type == "json_schema"


def test_json_object_gives_an_object(client):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "json_object"},
                                         temperature=0, max_tokens=160, extra_body={"max_reasoning_tokens": 4})
    if out.choices[0].finish_reason == "stop":  # unbounded language: a random model may run out of tokens
        assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_constraint_rules_per_tool_choice():
    """cluster.protocol.structured.constraint: what each tool_choice enforces (no cluster needed)."""
    from cluster.protocol.chat import parse_chat  # noqa: PLC0415

    def spec(**body):
        return parse_chat({"model": "tiny", "messages": MESSAGES, **body}, 0).sampling.get("structured_outputs")

    assert spec() is None and spec(tools=TOOLS) is None and spec(tools=TOOLS, tool_choice="auto") is None
    required = spec(tools=TOOLS, tool_choice="required")
    assert required.final is None and [n for n, _ in required.functions] == ["get_weather", "lookup"]
    assert all(g.kind == "json_schema" for _, g in required.functions)
    named = spec(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "lookup"}})
    assert named.final is None and [n for n, _ in named.functions] == ["lookup"]
    none = spec(tools=TOOLS, tool_choice="none")
    assert none.final.free and none.functions == ()
    strict = spec(tools=[{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}, TOOLS[1]])
    assert strict.final.free and [g.kind for _, g in strict.functions] == ["json_schema", "text"]
    answer = spec(response_format=fmt(0), tools=TOOLS)
    assert answer.final.kind == "json_schema" and [g.kind for _, g in answer.functions] == ["text", "text"]
    assert spec(response_format={"type": "json_object"}).final.kind == "json_object"
