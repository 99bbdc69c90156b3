"""End to end through the GrpcGateway deployment of a real local cluster (tiny model, CPU), with stubs from proto/."""

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.grpc.conftest import AUTH, wait_idle

LONG = 3000  # tokens: far more than a test waits for (~25 ms each on this CPU)
SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}}'


@pytest.fixture(scope="module")
def stub(grpc_app):
    return grpc_app.stub()


@pytest.fixture(scope="module")
def pb(stubs):
    return stubs.pb


def test_generate_streams_tokens_logprobs_and_usage(stub, pb):
    req = pb.GenerateRequest(model="tiny", prompt="The capital of France is",
                             sampling=pb.SamplingParams(max_tokens=6, temperature=0, logprobs=3, ignore_eos=True))
    call = stub.Generate(req, metadata=AUTH, timeout=60)
    messages = list(call)
    deltas, last = messages[:-1], messages[-1]
    tokens = [t for m in deltas for t in m.token_ids]
    assert len(tokens) == 6 and [m.finish_reason for m in deltas][-1] == pb.FINISH_REASON_LENGTH
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in deltas[:-1])
    logprobs = [lp for m in deltas for lp in m.logprobs]
    assert [lp.token_id for lp in logprobs] == tokens
    assert all(len(lp.top) == 3 and lp.top[0].logprob >= lp.top[-1].logprob for lp in logprobs)
    assert all(lp.top[0].token_id == lp.token_id for lp in logprobs)  # greedy: the sampled token is the top one
    assert last.usage.completion_tokens == 6 and last.usage.prompt_tokens > 0 and not last.token_ids
    assert dict(call.initial_metadata())["x-gptoss-replica"]
    same = list(stub.Generate(pb.GenerateRequest(model="tiny", prompt_token_ids=req_ids(stub, pb, req.prompt),
                                                 sampling=req.sampling), metadata=AUTH, timeout=60))
    assert [t for m in same for t in m.token_ids] == tokens  # token-id prompt == text prompt


def req_ids(stub, pb, text: str) -> list[int]:
    return list(stub.Tokenize(pb.TokenizeRequest(model="tiny", text=text), metadata=AUTH, timeout=30).token_ids)


def test_chat_streams_channels_and_usage(stub, pb):
    req = pb.ChatRequest(model="tiny", messages=[pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."),
                                                 pb.Message(role=pb.ROLE_USER, content="Hello!")],
                         reasoning_effort=pb.REASONING_EFFORT_LOW,
                         tools=[pb.Tool(name="get_weather", description="Weather of a city", parameters_json=SCHEMA)],
                         sampling=pb.SamplingParams(max_tokens=12, seed=1))
    messages = list(stub.Chat(req, metadata=AUTH, timeout=60))
    usage, finish = messages[-1].usage, messages[-2].finish_reason
    assert usage.completion_tokens == sum(len(m.token_ids) for m in messages)
    assert (finish, usage.completion_tokens) == (pb.FINISH_REASON_LENGTH, 12) or \
        finish in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_TOOL_CALLS)  # the random model may end its turn early
    text = "".join(c.text for m in messages for c in m.content)
    assert text and all(c.channel != pb.CHANNEL_UNSPECIFIED for m in messages for c in m.content)
    count = stub.CountTokens(pb.TokenizeRequest(model="tiny", chat=pb.ChatInput(
        messages=req.messages, tools=req.tools, reasoning_effort=req.reasoning_effort)), metadata=AUTH, timeout=30)
    assert count.count == usage.prompt_tokens and count.max_model_len == 4096  # rendered exactly as Chat renders it


def test_tokenize_list_models_and_health(grpc_app, stub, pb, stubs):
    out = stub.Tokenize(pb.TokenizeRequest(model="tiny", text="Hello world"), metadata=AUTH, timeout=30)
    assert out.count == len(out.token_ids) == 2
    models = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=30).models
    assert [m.name for m in models] == ["tiny"] and models[0].owned_by == "gptoss-serve"
    health = health_pb2_grpc.HealthStub(grpc_app.channel())  # no key needed
    for service in ("", stubs.service):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(grpc_app, stubs):
    reflect = reflection_pb2_grpc.ServerReflectionStub(grpc_app.channel())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = list(reflect.ServerReflectionInfo(iter([request]), metadata=AUTH, timeout=10))
    names = {s.name for s in answer.list_services_response.service}
    assert {stubs.service, "grpc.health.v1.Health"} <= names
    with pytest.raises(grpc.RpcError) as err:
        list(reflect.ServerReflectionInfo(iter([request]), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong-key-0123456789"),),
                                      (("authorization", "test-key-0123456789"),)],
                         ids=["missing", "wrong", "no-bearer"])
def test_bad_key_is_unauthenticated(stub, pb, metadata):
    calls = [lambda: list(stub.Generate(pb.GenerateRequest(model="tiny", prompt="x"), metadata=metadata, timeout=10)),
             lambda: stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()


def _bad(pb):
    user = [pb.Message(role=pb.ROLE_USER, content="hi")]
    gen, chat = pb.GenerateRequest, pb.ChatRequest
    return [
        ("no-prompt", "Generate", gen(model="tiny"), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        ("no-model", "Generate", gen(prompt="x"), grpc.StatusCode.INVALID_ARGUMENT, "model"),
        ("unknown-model", "Generate", gen(model="nope", prompt="x"), grpc.StatusCode.NOT_FOUND, "model"),
        ("temperature", "Generate", gen(model="tiny", prompt="x", sampling=pb.SamplingParams(temperature=-1)),
         grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
        ("logprobs", "Generate", gen(model="tiny", prompt="x", sampling=pb.SamplingParams(logprobs=99)),
         grpc.StatusCode.INVALID_ARGUMENT, "sampling.logprobs"),
        ("beyond-context", "Generate", gen(model="tiny", prompt="x", sampling=pb.SamplingParams(max_tokens=5000)),
         grpc.StatusCode.INVALID_ARGUMENT, "sampling.max_tokens"),
        ("token-id", "Generate", gen(model="tiny", prompt_token_ids=[1, 10**7]), grpc.StatusCode.INVALID_ARGUMENT,
         "prompt_token_ids"),
        ("no-messages", "Chat", chat(model="tiny"), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        ("role", "Chat", chat(model="tiny", messages=[pb.Message(content="hi")]), grpc.StatusCode.INVALID_ARGUMENT,
         "messages[0].role"),
        ("tool-json", "Chat", chat(model="tiny", messages=user, tools=[pb.Tool(name="f", parameters_json="{")]),
         grpc.StatusCode.INVALID_ARGUMENT, "tools[0].parameters_json"),
        ("tool-name", "Chat", chat(model="tiny", messages=user, tools=[pb.Tool(name="bad name")]),
         grpc.StatusCode.INVALID_ARGUMENT, "tools[0].name"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_malformed_request_names_the_field(stub, pb, case):
    name, method, request, code, field = _bad(pb)[case]
    with pytest.raises(grpc.RpcError) as err:
        list(getattr(stub, method)(request, metadata=AUTH, timeout=30))
    assert err.value.code() == code, (name, err.value.details())
    assert err.value.details().startswith(field), (name, err.value.details())


def test_deadline_exceeded_frees_the_engine_blocks(grpc_app, stub, pb):
    req = pb.GenerateRequest(model="tiny", prompt="Count forever:",
                             sampling=pb.SamplingParams(max_tokens=LONG, ignore_eos=True))
    started = time.monotonic()
    received = []
    with pytest.raises(grpc.RpcError) as err:
        for message in stub.Generate(req, metadata=AUTH, timeout=1.5):
            received.append(message)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert received and time.monotonic() - started < 5  # it was streaming when the deadline hit
    wait_idle(grpc_app, "tiny", timeout=10)


def test_client_cancel_frees_the_engine_blocks(grpc_app, stub, pb):
    req = pb.GenerateRequest(model="tiny", prompt="Count forever:",
                             sampling=pb.SamplingParams(max_tokens=LONG, ignore_eos=True))
    call = stub.Generate(req, metadata=AUTH, timeout=120)
    for _, _ in zip(range(3), call):
        pass
    busy = grpc_app.engine_stats("tiny")
    assert busy["num_running"] == 1 and busy["kv_cache_usage"] > 0
    call.cancel()
    wait_idle(grpc_app, "tiny", timeout=10)


def test_engine_aborts_at_the_request_deadline(grpc_app, stubs):
    """The deadline travels with the request: the replica aborts the engine request itself (no client cancel)."""
    from cluster.errors import ApiError
    from cluster.grpc import convert

    req = convert.to_generate(stubs.pb.GenerateRequest(model="tiny", prompt="Count forever:", sampling=stubs.pb
                                                       .SamplingParams(max_tokens=LONG, ignore_eos=True)))
    req.deadline = time.time() + 1.0
    items = list(grpc_app.handle("tiny").options(stream=True).generate.remote(req))
    assert isinstance(items[-1], ApiError) and items[-1].status == 408
    assert 3 < len(items) < LONG
    wait_idle(grpc_app, "tiny", timeout=10)


def test_concurrent_streams_all_complete(stub, pb):
    results, errors = {}, []

    def run(i):
        try:
            msgs = list(stub.Generate(pb.GenerateRequest(model="tiny", prompt=f"Stream {i}", sampling=pb.SamplingParams(
                max_tokens=8, ignore_eos=True)), metadata=AUTH, timeout=60))
            results[i] = msgs[-1].usage.completion_tokens
        except grpc.RpcError as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {i: 8 for i in range(6)}


def test_chat_response_format_and_required_tool_choice_are_enforced(stub, pb):
    """Constrained decoding through gRPC: the final channel validates against the schema; tool_choice REQUIRED
    gives a call whose arguments validate; a bad schema is INVALID_ARGUMENT naming the field."""
    import json  # noqa: PLC0415

    import jsonschema  # noqa: PLC0415

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9},
                                               "w": {"enum": ["a", "b"]}}, "required": ["n", "w"]}
    user = [pb.Message(role=pb.ROLE_USER, content="JSON please")]
    for seed in range(3):
        req = pb.ChatRequest(model="tiny", messages=user, response_format=pb.ResponseFormat(json_schema=json.dumps(
            schema)), sampling=pb.SamplingParams(max_tokens=80, seed=seed, max_reasoning_tokens=6))
        messages = list(stub.Chat(req, metadata=AUTH, timeout=120))
        final = "".join(c.text for m in messages for c in m.content if c.channel == pb.CHANNEL_FINAL)
        jsonschema.validate(json.loads(final), schema)
        req = pb.ChatRequest(model="tiny", messages=user, tools=[pb.Tool(name="f", parameters_json=json.dumps(schema))],
                             tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
                             sampling=pb.SamplingParams(max_tokens=80, seed=seed, max_reasoning_tokens=6))
        calls = [t for m in stub.Chat(req, metadata=AUTH, timeout=120) for t in m.tool_calls]
        assert calls[0].name == "f"
        jsonschema.validate(json.loads("".join(t.arguments for t in calls)), schema)
    bad = pb.ChatRequest(model="tiny", messages=user, response_format=pb.ResponseFormat(json_schema='{"not": {}}'))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(bad, metadata=AUTH, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "response_format.json_schema.not" in \
        err.value.details()
