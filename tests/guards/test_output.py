"""Output filters on the stream, through the real front door and engine with the official openai client: a regex that
matches the middle of the tiny model's greedy answer ends that answer with finish_reason content_filter where the
window holding the match starts (the windows before it go out, nothing of the match), in completions, chat and the
Responses API, streamed or not; the request is audited as content_filter."""

import asyncio
import json
import re

import pytest

EVERY = 4
PROMPT = "Once upon a time"


def check_cut(pieces: list[str], pattern: str, text: str) -> None:
    """`text` (what a client got) is the answer up to a window's start: a prefix of it made of whole pieces, without
    the match, and the match ends within one window (EVERY tokens) after it."""
    end = re.search(pattern, "".join(pieces)).end()
    k = next(k for k in range(len(pieces) + 1) if "".join(pieces[:k]) == text)
    assert not re.search(pattern, text) and len("".join(pieces[:k + EVERY])) >= end


def filtered(front, tmp_path):
    """(ingress, client) with a regex output filter whose pattern is set per test."""
    def make(pattern: str):
        return front({"guards": {"every_tokens": EVERY,
                                 "filters": {"words": {"type": "regex", "builtin": [],
                                                       "patterns": [{"name": "words", "regex": pattern}]}},
                                 "models": {"tiny": {"output": ["words"]}}},
                      "responses": {"store_path": str(tmp_path / "store.sqlite3")}})
    return make


async def _completion_pieces(client) -> list[str]:
    stream = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                             extra_body={"ignore_eos": True})
    return [c.choices[0].text async for c in stream if c.choices]


def _shown(message) -> str:
    """The text a chat message or delta shows: its reasoning (an extension field), then its content."""
    return (getattr(message, "reasoning_content", None) or "") + (message.content or "")


def _middle(pieces: list[str]) -> str:
    """A pattern for pieces 10-11 of the answer."""
    return re.escape(pieces[10] + pieces[11])


def test_a_streamed_completion_stops_where_the_match_starts(front, tmp_path):
    _, plain = front()
    pieces = asyncio.run(_completion_pieces(plain))
    assert len(pieces) > 16
    pattern = _middle(pieces)
    ingress, client = filtered(front, tmp_path)(pattern)

    async def go():
        stream = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True})
        return [c async for c in stream]

    chunks = asyncio.run(go())
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    check_cut(pieces, pattern, text)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    assert chunks[-1].usage.completion_tokens < 24
    asyncio.run(ingress.door.close())
    records = [json.loads(line) for f in ingress.config.audit.directory().glob("audit-*.jsonl")
               for line in f.read_text().splitlines()]
    assert [(r["outcome"], r["guards"], r["completion_tokens"] > len(text) // 8) for r in records] == [
        ("content_filter", ["words:block"], True)]


def test_chat_and_responses_end_with_content_filter_streamed_or_not(front, tmp_path):
    _, plain = front()
    messages = [{"role": "user", "content": "Tell me a story."}]

    async def chat_pieces():
        stream = await plain.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                                     stream=True, extra_body={"ignore_eos": True})
        return [_shown(c.choices[0].delta) async for c in stream if c.choices and _shown(c.choices[0].delta)]

    pieces = asyncio.run(chat_pieces())
    pattern = _middle(pieces)
    _, client = filtered(front, tmp_path)(pattern)

    async def go():
        body = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                                    extra_body={"ignore_eos": True})
        events = [e async for e in await client.responses.create(
            model="tiny", input="Tell me a story.", max_output_tokens=24, temperature=0, stream=True)]
        stored = await client.responses.retrieve(events[-1].response.id)
        return body, events, stored

    body, events, stored = asyncio.run(go())
    assert body.choices[0].finish_reason == "content_filter"
    check_cut(pieces, pattern, _shown(body.choices[0].message))
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "content_filter"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert stored.status == "incomplete" and stored.incomplete_details.reason == "content_filter"


@pytest.mark.parametrize("every", [1, 16])
def test_windows_of_any_size_keep_the_stream_whole(front, tmp_path, every):
    """Nothing matches: the same answer as without the filter, whatever the window."""
    _, plain = front()
    pieces = asyncio.run(_completion_pieces(plain))
    _, client = front({"guards": {"every_tokens": every, "filters": {"pii": {"type": "regex"}},
                                  "models": {"tiny": {"output": ["pii"]}}}})
    assert "".join(asyncio.run(_completion_pieces(client))) == "".join(pieces)
