"""Harmony output -> OpenAI shapes, with the real tokenizer and scripted generations (the tiny model's random
weights never write harmony, so the channels and tool calls are checked here, token by token)."""

import json

import pytest

from cluster.errors import ApiError
from cluster.output.openai import ChatFormatter
from cluster.output.responses import ResponseRecord, ResponsesFormatter
from cluster.protocol import GenerateRequest, input_to_messages
from engine.outputs import CompletionOutput, RequestOutput
from engine.text.tokenizer import Tokenizer

REASON_THEN_ANSWER = ("<|channel|>analysis<|message|>User greets. Reply.<|end|>"
                      "<|start|>assistant<|channel|>final<|message|>Hello there!<|return|>")
TOOL_CALL = ("<|channel|>analysis<|message|>Need weather.<|end|>"
             '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
             '{"city": "Paris"}<|call|>')


@pytest.fixture(scope="module")
def tok(tiny_model):
    return Tokenizer.load(tiny_model)


def outputs(tok, text: str, step: int = 3, finish: str = "stop"):
    """The generation as RequestOutput deltas of `step` tokens each."""
    ids = tok.encode(text, allow_special=True)
    for i in range(0, len(ids), step):
        last = i + step >= len(ids)
        yield RequestOutput("r", None, [1] * 20, [CompletionOutput(0, ids[i:i + step], "", None,
                                                                   finish if last else None)],
                            finished=last, num_cached_tokens=16)


def run(formatter, tok, text):
    """Frames (or the body) the formatter makes of `text`; a Responses formatter's closing record is left out."""
    frames = [f for out in outputs(tok, text) for f in formatter.feed(out)]
    return frames + [f for f in formatter.finish() if not isinstance(f, ResponseRecord)]


def chunks(frames):
    return [json.loads(f.split("data: ", 1)[1]) for f in frames if "data: {" in f]


def chat_request(stream: bool) -> GenerateRequest:
    return GenerateRequest("chat", "m", "chatcmpl-1", {}, stream=stream, include_usage=stream)


def test_chat_splits_reasoning_from_content(tok):
    body = run(ChatFormatter(chat_request(False), tok, "m"), tok, REASON_THEN_ANSWER)[0]
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == "User greets. Reply." and message["content"] == "Hello there!"
    assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in message
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 16
    assert 0 < body["usage"]["completion_tokens_details"]["reasoning_tokens"] < body["usage"]["completion_tokens"]


def test_chat_stream_deltas_add_up(tok):
    frames = run(ChatFormatter(chat_request(True), tok, "m"), tok, REASON_THEN_ANSWER)
    assert frames[-1] == "data: [DONE]\n\n"
    parsed = chunks(frames)
    deltas = [c["choices"][0]["delta"] for c in parsed if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "User greets. Reply."
    assert "".join(d.get("content", "") for d in deltas) == "Hello there!"
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["completion_tokens"] > 0


def test_chat_tool_call_from_commentary(tok):
    body = run(ChatFormatter(chat_request(False), tok, "m"), tok, TOOL_CALL)[0]
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"


def test_chat_tool_call_streams_header_then_arguments(tok):
    deltas = [c["choices"][0]["delta"] for c in chunks(run(ChatFormatter(chat_request(True), tok, "m"), tok,
                                                           TOOL_CALL)) if c["choices"]]
    parts = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert parts[0]["function"]["name"] == "get_weather" and parts[0]["id"].startswith("call_")
    assert all("id" not in p and p["index"] == 0 for p in parts[1:])
    assert "".join(p["function"]["arguments"] for p in parts) == '{"city": "Paris"}'


def test_responses_output_items_and_events(tok):
    req = GenerateRequest("response", "m", "resp_1", {}, stream=True)
    frames = run(ResponsesFormatter(req, tok, "m"), tok, TOOL_CALL)
    events = chunks(frames)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "function_call"]
    assert final["output"][1]["name"] == "get_weather" and final["output"][1]["arguments"] == '{"city": "Paris"}'
    assert "response.function_call_arguments.done" in kinds and "response.reasoning_text.delta" in kinds
    plain = run(ResponsesFormatter(GenerateRequest("response", "m", "resp_2", {}), tok, "m"), tok,
                REASON_THEN_ANSWER)[0]
    assert plain["output"][1]["content"][0]["text"] == "Hello there!" and plain["status"] == "completed"


def test_responses_input_items_become_chat_messages():
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    messages = input_to_messages(items, "Be brief.")
    assert [m["role"] for m in messages] == ["developer", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    with pytest.raises(ApiError) as err:
        input_to_messages([{"type": "image", "url": "x"}], None)
    assert err.value.param == "input[0].type"


PYTHON_CALL = ("<|channel|>analysis<|message|>Compute it.<|end|>"
               "<|start|>assistant<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>")
BROWSER_CALL = '<|channel|>analysis to=browser.search json<|message|>{"query": "gpt-oss"}<|call|>'


def test_a_call_the_model_makes_to_a_builtin_tool_waits_for_the_server(tok):
    from cluster.tools.result import ToolResult

    req = GenerateRequest("response", "m", "resp_3", {}, stream=True, builtin={"python": "tools[0]"},
                          include=["code_interpreter_call.outputs"])
    fmt = ResponsesFormatter(req, tok, "m")
    frames = [f for out in outputs(tok, PYTHON_CALL) for f in fmt.feed(out)]
    call = fmt.pending
    assert (call.kind, call.recipient, call.channel, call.content_type, call.text) == (
        "python", "python", "analysis", "code", "print(6 * 7)")
    frames += fmt.running() + fmt.resolve(ToolResult("42\n", False, {"outputs": [{"type": "logs", "logs": "42\n"}]}))
    fmt.next_step()
    frames += [f for out in outputs(tok, "<|channel|>final<|message|>It is 42.<|return|>") for f in fmt.feed(out)]
    frames += [f for f in fmt.finish() if not isinstance(f, ResponseRecord)]
    events = chunks(frames)
    kinds = [e["type"] for e in events]
    assert kinds.index("response.code_interpreter_call_code.done") < kinds.index(
        "response.code_interpreter_call.interpreting") < kinds.index("response.code_interpreter_call.completed")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "code_interpreter_call", "message"]
    assert final["output"][1]["outputs"] == [{"type": "logs", "logs": "42\n"}] and final["output"][1]["code"] == \
        "print(6 * 7)"
    assert fmt.hidden[final["output"][1]["id"]]["result"] == "42\n"


def test_a_builtin_tool_not_offered_is_a_function_call(tok):
    fmt = ResponsesFormatter(GenerateRequest("response", "m", "resp_4", {}), tok, "m")
    body = run(fmt, tok, BROWSER_CALL)[0]
    assert fmt.pending is None and body["output"][0]["type"] == "function_call"
    assert body["output"][0]["name"] == "browser.search"
    offered = ResponsesFormatter(GenerateRequest("response", "m", "resp_5", {}, builtin={"browser": {"results": 1}}),
                                 tok, "m")
    [f for out in outputs(tok, BROWSER_CALL) for f in offered.feed(out)]
    assert offered.pending.item["action"] == {"type": "search", "query": "gpt-oss"}
