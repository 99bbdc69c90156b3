"""The replica's windows and tally (cluster/output/window.py), with the real tokenizer and scripted harmony generations:
windows of one token and then N, the text each shows, and `cut`: the items that end the answer before a window, which
with the windows before it form a whole answer in every format (checked against the published response models)."""

import json

import pytest

from cluster.output.deltas import DeltaFormatter, SampleDelta, StreamEnd
from cluster.output.openai import ChatFormatter, CompletionFormatter
from cluster.output.responses import ResponseRecord, ResponsesFormatter
from cluster.output.window import Tally, Watch, Window
from cluster.protocol import GenerateRequest, parse_responses
from cluster.protocol.schemas import ChatCompletion, Completion, Response
from engine.outputs import CompletionOutput, RequestOutput
from engine.text.tokenizer import Tokenizer

ANSWER = ("<|channel|>analysis<|message|>The user greets us. Reply kindly.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>Hello there, how are you today?<|return|>")


@pytest.fixture(scope="module")
def tok(tiny_model):
    return Tokenizer.load(tiny_model)


def outputs(tok, text: str, harmony: bool = True):
    """One token per engine output, as a decode step makes them."""
    ids = tok.encode(text, allow_special=harmony)
    for i, token in enumerate(ids):
        last = i == len(ids) - 1
        yield RequestOutput("r", None, [1] * 10, [CompletionOutput(0, [token], tok.decode([token]), None,
                                                                   "stop" if last else None)], finished=last)


def request(kind: str, stream: bool, every: int = 4, output: str = "openai") -> GenerateRequest:
    if kind == "response":  # as the Responses API makes it (the echo fields the response object repeats)
        req = parse_responses({"model": "m", "input": "hi", "stream": stream}, 0)
    else:
        req = GenerateRequest(kind, "m", "x-1", {}, stream=stream, include_usage=stream, output=output)
    req.tally, req.tally_text, req.guard_every = True, True, every
    return req


def windows_of(tok, formatter, req, text=ANSWER, harmony=True):
    watch = Watch(req, formatter)
    items = [i for out in outputs(tok, text, harmony) for i in watch.feed(out)]
    items += watch.finish(formatter.finish()) + [watch.tally()]
    return items


@pytest.mark.parametrize("kind,cls", [("chat", ChatFormatter), ("response", ResponsesFormatter),
                                      ("chat-deltas", DeltaFormatter)])
def test_windows_are_one_token_then_every_n_and_carry_the_visible_text(tok, kind, cls):
    req = request(kind.split("-")[0], True, 4, "deltas" if kind.endswith("deltas") else "openai")
    items = windows_of(tok, cls(req, tok, "m"), req)
    windows, tally = items[:-1], items[-1]
    assert all(isinstance(w, Window) for w in windows) and isinstance(tally, Tally)
    assert [w.tokens for w in windows[:2]] == [1, 4] and all(w.tokens <= 4 for w in windows)
    assert windows[-1].final and not any(w.final for w in windows[:-1])
    text = "".join(w.text for w in windows)
    assert text == "The user greets us. Reply kindly.Hello there, how are you today?" == tally.text
    assert tally.usage.completion_tokens == sum(w.tokens for w in windows) and tally.finish_reason == "stop"


def _released_then_cut(windows, n):
    """What a client gets when window `n` is refused: the items of the windows before it, then its cut."""
    return [i for w in windows[:n] for i in w.items] + windows[n].cut


def _chunks(frames):
    return [json.loads(f.split("data: ", 1)[1]) for f in frames if "data: {" in f]


def test_a_cut_chat_stream_ends_with_content_filter_after_what_was_released(tok):
    req = request("chat", True)
    windows = windows_of(tok, ChatFormatter(req, tok, "m"), req)[:-1]
    for n in (0, 3, len(windows) - 1):
        frames = _released_then_cut(windows, n)
        chunks = _chunks(frames)
        shown = "".join(c["choices"][0]["delta"].get("reasoning_content", "") +
                        c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert shown == "".join(w.text for w in windows[:n])
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "content_filter"
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant" and frames[-1] == "data: [DONE]\n\n"
        assert chunks[-1]["usage"]["completion_tokens"] == sum(w.tokens for w in windows[:n])


def test_a_cut_chat_body_and_completion_body_validate(tok):
    req = request("chat", False)
    windows = windows_of(tok, ChatFormatter(req, tok, "m"), req)[:-1]
    (body,) = windows[5].cut
    ChatCompletion.model_validate(body)
    message = body["choices"][0]
    assert message["finish_reason"] == "content_filter"
    assert (message["message"]["reasoning_content"] or "") + (message["message"]["content"] or "") == \
        "".join(w.text for w in windows[:5])
    req = request("completion", False)
    windows = windows_of(tok, CompletionFormatter(req, tok, "m"), req, "Once upon a time there was a fox.", False)[:-1]
    (body,) = windows[2].cut
    Completion.model_validate(body)
    assert body["choices"][0]["text"] == "".join(w.text for w in windows[:2])


def test_a_cut_response_stream_ends_incomplete_with_whole_items_and_its_record(tok):
    req = request("response", True)
    windows = windows_of(tok, ResponsesFormatter(req, tok, "m"), req)[:-1]
    for n in (0, 2, len(windows) - 1):
        items = _released_then_cut(windows, n)
        records = [i for i in items if isinstance(i, ResponseRecord)]
        events = _chunks([i for i in items if isinstance(i, str)])
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.incomplete"
        final = Response.model_validate(events[-1]["response"])
        assert final.status == "incomplete" and final.incomplete_details.reason == "content_filter"
        added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
        done = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
        assert added == done == [o.id for o in final.output]  # every item opened was closed
        assert len(records) == 1 and records[0].body["status"] == "incomplete"


def test_a_cut_response_body_and_grpc_deltas(tok):
    req = request("response", False)
    windows = windows_of(tok, ResponsesFormatter(req, tok, "m"), req)[:-1]
    body, record = windows[4].cut
    assert Response.model_validate(body).incomplete_details.reason == "content_filter"
    assert isinstance(record, ResponseRecord) and record.body["output"][0]["type"] == "reasoning"
    req = request("chat", True, output="deltas")
    windows = windows_of(tok, DeltaFormatter(req, tok, "m"), req)[:-1]
    ends = windows[3].cut
    assert isinstance(ends[0], SampleDelta) and ends[0].finish_reason == "content_filter"
    assert isinstance(ends[-1], StreamEnd) and ends[-1].usage.completion_tokens == sum(w.tokens for w in windows[:3])


def test_without_windows_items_pass_as_made_and_the_tally_closes(tok):
    req = request("chat", True, every=0)
    req.tally_text = False
    formatter = ChatFormatter(req, tok, "m")
    items = windows_of(tok, formatter, req)
    assert all(isinstance(i, str) for i in items[:-1]) and items[-1].text is None
    assert formatter.fresh is None  # no text buffer kept when nobody reads it
