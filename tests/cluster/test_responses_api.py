"""The stateful Responses API end to end: the real application (tiny model, CPU, SQLite store in a temp dir, the
python tool in bubblewrap, a local search service, a local MCP server) driven by the official openai client.

Oracles: the openai client's own models of every object; greedy decoding (the same prompt gives the same tokens) and
the server's own input-token count for "the same prompt"; the local services' records of what they were asked; the
store's owner scoping (a second key sees nothing).
"""

import json
import time

import httpx
import openai
import pytest

from cluster.protocol import schemas
from tests.cluster.conftest import GATEWAY_RESOURCE, free_port, model_entry
from tests.tools import services
from tests.tools.test_sandbox import needs_bwrap

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
GRPC_PORT = free_port()
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def search():
    with services.search_service() as (url, seen):
        yield url, seen


@pytest.fixture(scope="module")
def mcp_url():
    with services.mcp_server() as url:
        yield url


@pytest.fixture(scope="module")
def base(serve_app, tiny_model, tmp_path_factory, search, mcp_url):
    store = tmp_path_factory.mktemp("store") / "responses.sqlite3"
    config = {
        "models": [model_entry("tiny", tiny_model, default_max_tokens=8)],
        "auth": {"api_keys": [KEY_A, KEY_B]},
        "responses": {"store_path": str(store), "background_lease_s": 3},
        "grpc": {"enabled": True, "port": GRPC_PORT, "node_resource": GATEWAY_RESOURCE},
        "tools": {"python": {"enabled": True, "timeout_s": 10},
                  "browser": {"backend": "http", "search_url": f"{search[0]}/search",
                              "fetch_url": f"{search[0]}/fetch"},
                  "mcp": {"allowed_servers": [mcp_url]}},
    }
    return serve_app(config, "responses")


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY_A, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def other(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY_B, max_retries=0, timeout=60)


def create(client, **fields):
    return client.responses.create(**{"model": "tiny", "max_output_tokens": 6, "temperature": 0, **fields})


def http(base, method, path, body=None, key=KEY_A, **params):
    return httpx.request(method, f"{base}{path}", json=body, params=params or None,
                         headers={"Authorization": f"Bearer {key}"}, timeout=60)


# -- stored responses -------------------------------------------------------------------------------------------------
def test_stored_response_retrieve_input_items_delete(client, base):
    out = create(client, input="Hello there.", metadata={"t": "1"})
    assert out.store is True and out.status in ("completed", "incomplete")  # the operator's default: store
    got = client.responses.retrieve(out.id)
    assert got.model_dump() == out.model_dump()
    schemas.Response.model_validate(http(base, "GET", f"/v1/responses/{out.id}").json())
    items = client.responses.input_items.list(out.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "Hello there."
    schemas.InputItemList.model_validate(http(base, "GET", f"/v1/responses/{out.id}/input_items").json())
    schemas.InputTokens.model_validate(http(base, "POST", "/v1/responses/input_tokens",
                                            {"model": "tiny", "input": "Hello there."}).json())
    schemas.DeletedResponse.model_validate(http(base, "DELETE", f"/v1/responses/{out.id}").json())
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(out.id)


def test_store_false_is_not_kept(client):
    out = create(client, input="Hello.", store=False)
    assert out.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(out.id)


def test_three_turns_by_previous_response_id_render_the_whole_history(client):
    turn1 = [{"type": "message", "role": "user", "content": "What is the weather in Paris?"}]
    r1 = create(client, input=turn1, tools=[WEATHER], instructions="Be brief.")
    turn2 = [{"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city":"Paris"}'},
             {"type": "function_call_output", "call_id": "call_9", "output": "sunny, 21 C"}]
    r2 = create(client, input=turn2, tools=[WEATHER], instructions="Be brief.", previous_response_id=r1.id)
    turn3 = [{"type": "message", "role": "user", "content": "And tomorrow?"}]
    r3 = create(client, input=turn3, tools=[WEATHER], instructions="Be brief.", previous_response_id=r2.id)
    history = turn1 + _as_input(r1) + turn2 + _as_input(r2) + turn3
    whole = create(client, input=history, tools=[WEATHER], instructions="Be brief.")
    assert whole.usage.input_tokens == r3.usage.input_tokens
    assert _texts(whole) == _texts(r3)  # greedy: the same prompt, the same tokens
    counted = client.responses.input_tokens.count(model="tiny", input=turn3, tools=[WEATHER],
                                                  instructions="Be brief.", previous_response_id=r2.id)
    assert counted.input_tokens == client.responses.input_tokens.count(
        model="tiny", input=history, tools=[WEATHER], instructions="Be brief.").input_tokens == r3.usage.input_tokens
    assert r3.previous_response_id == r2.id


def _as_input(response) -> list[dict]:
    return [item.model_dump(exclude_none=True) for item in response.output]


def _texts(response) -> list:
    return [json.dumps(i.model_dump(exclude={"id"}), sort_keys=True) for i in response.output]


def test_a_second_key_gets_404_on_the_first_keys_response(client, other, base):
    out = create(client, input="Mine.")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(out.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(out.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(out.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(out.id)
    with pytest.raises(openai.NotFoundError) as err:
        create(other, input="Continue.", previous_response_id=out.id)
    assert err.value.body["param"] == "previous_response_id"
    assert client.responses.retrieve(out.id).id == out.id  # still there for its owner


# -- background ---------------------------------------------------------------------------------------------------
def test_background_polls_to_completion(client):
    out = create(client, input="Take your time.", background=True)
    assert out.background is True and out.status in ("queued", "in_progress")
    final = _wait(client, out.id)
    assert final.status in ("completed", "incomplete") and final.usage.output_tokens == 6


def test_background_cancel_aborts_the_run(client):
    out = create(client, input="Write a lot.", background=True, max_output_tokens=900)
    cancelled = client.responses.cancel(out.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(out.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(create(client, input="Done already.").id)  # only background responses


def test_background_stream_resumes_after_a_sequence_number(client):
    stream = create(client, input="Stream it.", background=True, stream=True, max_output_tokens=12)
    first = []
    for event in stream:
        first.append(event)
        if len(first) == 4:
            break
    stream.close()
    response_id = first[0].response.id
    _wait(client, response_id)
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=first[-1].sequence_number))
    all_events = list(client.responses.retrieve(response_id, stream=True))
    assert [e.sequence_number for e in all_events] == list(range(len(all_events)))
    assert [e.model_dump() for e in all_events] == [e.model_dump() for e in first + rest]
    assert all_events[-1].type in ("response.completed", "response.incomplete")


def _wait(client, response_id, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = client.responses.retrieve(response_id)
        if out.status not in ("queued", "in_progress"):
            return out
        time.sleep(0.2)
    raise TimeoutError(response_id)


# -- tools the server runs ----------------------------------------------------------------------------------------
PYTHON = [{"type": "code_interpreter", "container": "auto"}]


def _python_call(code, **fields):
    return {"type": "code_interpreter_call", "id": "ci_test0001", "code": code, "container_id": "auto", **fields}


@needs_bwrap
def test_python_runs_real_code_and_the_model_reads_its_output(client):
    ask = {"type": "message", "role": "user", "content": "Sum 0..9 with python."}
    ran = create(client, input=[ask, _python_call("print(sum(range(10)))", status="in_progress")], tools=PYTHON,
                 include=["code_interpreter_call.outputs"])
    call = ran.output[0]
    assert (call.type, call.id, call.status, call.outputs[0].logs) == ("code_interpreter_call", "ci_test0001",
                                                                       "completed", "45\n")
    # the model's next step ran on exactly the prompt a client would send with that output already in it
    given = create(client, input=[ask, _python_call("print(sum(range(10)))", status="completed",
                                                    outputs=[{"type": "logs", "logs": "45\n"}])], tools=PYTHON)
    assert given.usage.input_tokens == ran.usage.input_tokens
    assert _texts(given) == _texts(ran)[1:]
    longer = create(client, input=[ask, _python_call("x", status="completed",
                                                     outputs=[{"type": "logs", "logs": "45\n" * 20}])], tools=PYTHON)
    assert longer.usage.input_tokens > ran.usage.input_tokens
    assert create(client, input=[ask, _python_call("print(1)", status="in_progress")], tools=PYTHON).output[0] \
        .outputs is None  # outputs only with include, as OpenAI


@needs_bwrap
def test_python_session_keeps_state_across_turns(client):
    first = create(client, input=[{"role": "user", "content": "x"}, _python_call("x = 6 * 7", status="in_progress")],
                   tools=PYTHON)
    second = create(client, previous_response_id=first.id, tools=PYTHON, include=["code_interpreter_call.outputs"],
                    input=[{"role": "user", "content": "y"}, {**_python_call("print(x)", status="in_progress"),
                                                              "id": "ci_test0002"}])
    assert second.output[0].outputs[0].logs == "42\n"


def test_browser_searches_the_local_service(client, search):
    url, seen = search
    seen.clear()
    call = {"type": "web_search_call", "id": "ws_test0001", "action": {"type": "search", "query": "riddle"},
            "status": "in_progress"}
    out = create(client, input=[{"role": "user", "content": "Find the riddle."}, call],
                 tools=[{"type": "web_search_preview"}], include=["web_search_call.action.sources"])
    item = out.output[0]
    assert item.type == "web_search_call" and item.status == "completed"
    assert [s.url for s in item.action.sources] == ["https://docs.example.org/bwrap"]
    assert ("/search", {"q": "riddle", "count": "10", "format": "json"}) in seen
    opened = create(client, previous_response_id=out.id, tools=[{"type": "web_search_preview"}],
                    input=[{"type": "web_search_call", "id": "ws_test0002", "status": "in_progress",
                            "action": {"type": "open_page", "url": "https://docs.example.org/bwrap"}}])
    assert opened.output[0].action.url == "https://docs.example.org/bwrap"
    assert ("/fetch", {"url": "https://docs.example.org/bwrap"}) in seen


def test_tool_items_match_the_published_models(client, base, mcp_url):
    tools = [{"type": "web_search_preview"}, {"type": "mcp", "server_label": "calc", "server_url": mcp_url,
                                              "require_approval": "never"}]
    call = {"type": "web_search_call", "id": "ws_model1", "action": {"type": "search", "query": "harmony"},
            "status": "in_progress"}
    out = http(base, "POST", "/v1/responses", {"model": "tiny", "max_output_tokens": 4, "tools": tools,
                                               "input": [call], "include": ["web_search_call.action.sources"]})
    body = schemas.Response.model_validate(out.json())
    assert [i.type for i in body.output][:2] == ["mcp_list_tools", "web_search_call"]


def test_mcp_tools_listed_and_called(client, mcp_url):
    tool = {"type": "mcp", "server_label": "calc", "server_url": mcp_url, "require_approval": "never"}
    call = {"type": "mcp_call", "id": "mcp_test0001", "server_label": "calc", "name": "add",
            "arguments": '{"a": 2, "b": 40}', "status": "in_progress"}
    out = create(client, input=[{"role": "user", "content": "Add."}, call], tools=[tool])
    listing, result = out.output[0], out.output[1]
    assert listing.type == "mcp_list_tools" and {t.name for t in listing.tools} == {"add", "shout", "fail"}
    assert (result.type, result.output, result.status) == ("mcp_call", "42", "completed")
    again = create(client, previous_response_id=out.id, tools=[tool], input=[{**call, "id": "mcp_test0002",
                                                                              "name": "fail",
                                                                              "arguments": '{"reason": "x"}'}])
    assert again.output[0].type == "mcp_call" and again.output[0].status == "failed"  # listed once per conversation


# -- gRPC parity ----------------------------------------------------------------------------------------------------
def test_grpc_chat_continues_and_stores_conversations_of_either_protocol(client, base):
    import grpc

    from cluster.grpc import codegen

    stubs = codegen.stubs()
    pb, stub = stubs.pb, stubs.grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}"))
    auth = (("authorization", f"Bearer {KEY_A}"),)
    first = create(client, input="Started over HTTP.")
    chat = pb.ChatRequest(model="tiny", messages=[pb.Message(role=pb.ROLE_USER, content="Continued over gRPC.")],
                          previous_response_id=first.id, store=True,
                          sampling=pb.SamplingParams(max_tokens=5, temperature=0))
    messages = list(stub.Chat(chat, metadata=auth, timeout=60))
    response_id = messages[-1].response_id
    assert response_id.startswith("resp_") and not any(m.response_id for m in messages[:-1])
    stored = client.responses.retrieve(response_id)
    assert stored.previous_response_id == first.id and stored.usage.input_tokens == messages[-1].usage.prompt_tokens
    assert [i.content[0].text for i in client.responses.input_items.list(response_id).data] == ["Continued over gRPC."]
    third = create(client, input="Back to HTTP.", previous_response_id=response_id)
    assert third.usage.input_tokens > stored.usage.input_tokens
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(pb.ChatRequest(model="tiny", messages=[pb.Message(role=pb.ROLE_USER, content="x")],
                                      previous_response_id=first.id),
                       metadata=(("authorization", f"Bearer {KEY_B}"),), timeout=60))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "previous_response_id" in err.value.details()


# -- bad input: a 4xx naming the field, nothing lost ------------------------------------------------------------
BAD = [
    ("POST", "/v1/responses", {"input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ("POST", "/v1/responses", {"input": "x", "previous_response_id": ""}, 400, "previous_response_id"),
    ("POST", "/v1/responses", {"input": "x", "previous_response_id": 7}, 400, "previous_response_id"),
    ("POST", "/v1/responses", {"input": "x", "store": "yes"}, 400, "store"),
    ("POST", "/v1/responses", {"input": "x", "background": 1}, 400, "background"),
    ("POST", "/v1/responses", {"input": "x", "background": True, "store": False}, 400, "store"),
    ("POST", "/v1/responses", {"input": "x", "include": ["reasoning.encrypted_content"]}, 400, "include[0]"),
    ("POST", "/v1/responses", {"input": "x", "max_tool_calls": 0}, 400, "max_tool_calls"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "file_search"}]}, 400, "tools[0].type"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "code_interpreter"}]}, 400, "tools[0].container"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "code_interpreter", "container": "cntr_1"}]}, 400,
     "tools[0].container"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "web_search", "filters": {"a": 1}}]}, 400,
     "tools[0].filters"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "mcp", "server_label": "m",
                                                         "server_url": "http://elsewhere/mcp",
                                                         "require_approval": "never"}]}, 400, "tools[0].server_url"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "mcp", "server_label": "m",
                                                         "server_url": "http://x"}]}, 400,
     "tools[0].require_approval"),
    ("POST", "/v1/responses", {"input": "x", "tools": [{"type": "mcp", "server_label": "bad label",
                                                         "server_url": "http://x", "require_approval": "never"}]},
     400, "tools[0].server_label"),
    ("POST", "/v1/responses", {"input": [{"type": "code_interpreter_call", "id": "c", "code": 5}]}, 400,
     "input[0].code"),
    ("POST", "/v1/responses", {"input": [{"type": "web_search_call", "id": "w", "action": {"type": "zap"}}]}, 400,
     "input[0].action.type"),
    ("POST", "/v1/responses", {"input": [{"type": "mcp_call", "id": "m", "server_label": "s", "name": "n"}]}, 400,
     "input[0].arguments"),
    ("GET", "/v1/responses/resp_nope", None, 404, "response_id"),
    ("GET", "/v1/responses/{id}?stream=maybe", None, 400, "stream"),
    ("GET", "/v1/responses/{id}?stream=true", None, 400, "stream"),
    ("GET", "/v1/responses/{id}?starting_after=3", None, 400, "starting_after"),
    ("GET", "/v1/responses/{id}?stream=true&starting_after=-2", None, 400, "starting_after"),
    ("GET", "/v1/responses/{id}?include=file_search_call.results", None, 400, "include"),
    ("GET", "/v1/responses/{id}?include_obfuscation=true", None, 400, "include_obfuscation"),
    ("GET", "/v1/responses/{id}?bogus=1", None, 400, "bogus"),
    ("GET", "/v1/responses/{id}/input_items?limit=0", None, 400, "limit"),
    ("GET", "/v1/responses/{id}/input_items?limit=101", None, 400, "limit"),
    ("GET", "/v1/responses/{id}/input_items?order=up", None, 400, "order"),
    ("GET", "/v1/responses/{id}/input_items?after=msg_nope", None, 400, "after"),
    ("DELETE", "/v1/responses/resp_nope", None, 404, "response_id"),
    ("POST", "/v1/responses/{id}/cancel", None, 400, "response_id"),
    ("POST", "/v1/responses/resp_nope/cancel", None, 404, "response_id"),
    ("POST", "/v1/responses/input_tokens", {"input": []}, 400, "input"),
]


@pytest.mark.parametrize("method,path,body,status,param", BAD, ids=[f"{b[0]} {b[1]} {b[4]}" for b in BAD])
def test_bad_input_gets_a_4xx_naming_the_field(client, base, method, path, body, status, param):
    kept = create(client, input="Kept.")
    if body is not None:
        body = {"model": "tiny", "max_output_tokens": 4, **body}
    resp = http(base, method, path.replace("{id}", kept.id), body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == param, resp.text
    assert client.responses.retrieve(kept.id).id == kept.id  # nothing lost


def test_openapi_publishes_the_new_routes(base):
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    assert {"/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items",
            "/v1/responses/{response_id}/cancel", "/v1/responses/input_tokens"} <= set(spec["paths"])
    assert set(spec["paths"]["/v1/responses/{response_id}"]) == {"get", "delete"}
