"""Engine outputs -> OpenAI chat-completion and completion bodies or SSE chunks.

Flow: the replica feeds each `RequestOutput` delta to `formatter.feed` (chat: every sample's new token ids go
through its own harmony stream parser, so analysis text becomes `reasoning_content`, final text `content`, and
commentary addressed to `functions.*` becomes `tool_calls`; with `logprobs`, each token of `content` gets its entry) -> streaming returns SSE frames at once, otherwise
the formatter accumulates -> `formatter.finish()` returns the closing frames (usage chunk, `[DONE]`) or the body.
"""

import json
from dataclasses import dataclass, field

from engine.outputs import RequestOutput
from engine.text.harmony_stream import Delta
from engine.text.vocab import FIRST_SPECIAL


def sse(payload: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"


def watched_text(req) -> list[str] | None:
    """A formatter's buffer of text shown since `take_text`: kept only when the front door reads it (output filters
    or the audit log's text; cluster/output/window.py)."""
    return [] if (req.guard_every or req.tally_text) else None


def drain(buffer: list[str] | None) -> str:
    """The buffer's text, the buffer emptied."""
    if not buffer:
        return ""
    text = "".join(buffer)
    buffer.clear()
    return text


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def chat(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens}}


@dataclass
class ChoiceState:
    """One sample's parse so far."""

    parser: object  # engine.text.harmony_stream.HarmonyStreamParser
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)  # OpenAI tool_call dicts, arguments filled as they stream
    call_index: dict[str, int] = field(default_factory=dict)  # tool_call_id -> index in tool_calls
    finish_reason: str | None = None
    num_tokens: int = 0
    reasoning_tokens: int = 0
    role_sent: bool = False
    logprobs: list[dict] = field(default_factory=list)  # chat logprobs entries of the content tokens so far


class ChatFormatter:
    """/v1/chat/completions: chunks (`chat.completion.chunk`) or one `chat.completion`."""

    def __init__(self, req, tokenizer, model: str):
        self.req, self.tokenizer, self.model = req, tokenizer, model
        n = req.sampling.get("n", 1)
        self.choices = [ChoiceState(tokenizer.stream_parser()) for _ in range(n)]
        self.usage = Usage()
        self.fresh = watched_text(req)  # text shown since take_text (content, reasoning, tool-call arguments)
        self.top_logprobs = req.sampling.get("logprobs")  # None: no logprobs asked

    def feed(self, out: RequestOutput) -> list[str]:
        self.usage.prompt_tokens, self.usage.cached_tokens = len(out.prompt_token_ids), out.num_cached_tokens
        frames = []
        for sample in out.outputs:
            state = self.choices[sample.index]
            deltas, logprobs = [], []
            for i, token in enumerate(sample.token_ids):
                if self.top_logprobs is not None and _in_content(state.parser, token):
                    logprobs.append(self._logprob(token, sample.logprobs[i]))
                new = state.parser.feed(int(token))
                state.reasoning_tokens += any(d.channel == "analysis" and d.recipient is None for d in new)
                deltas += new
            state.logprobs += logprobs
            state.num_tokens += len(sample.token_ids)
            if sample.finish_reason is not None:
                deltas += state.parser.finish()
                state.finish_reason = sample.finish_reason
            frames += self._apply(sample.index, state, deltas, logprobs)
        return frames if self.req.stream else []

    def _logprob(self, token: int, entry: dict[int, float]) -> dict:
        """OpenAI's chat logprobs entry of one token: its logprob, and the top_logprobs most likely tokens."""
        top = sorted(entry.items(), key=lambda kv: -kv[1])[: self.top_logprobs]
        return {**self._token(token, entry[token]), "top_logprobs": [self._token(t, lp) for t, lp in top]}

    def _token(self, token: int, logprob: float) -> dict:
        data = self.tokenizer.decode_bytes([token])
        return {"token": data.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(data)}

    def _apply(self, index: int, state: ChoiceState, deltas: list[Delta], logprobs: list[dict]) -> list[str]:
        delta: dict = {}
        if not state.role_sent:
            delta["role"], state.role_sent = "assistant", True
        for d in deltas:
            if self.fresh is not None:
                self.fresh.append(d.text)
            if d.recipient is not None:
                self._tool_delta(state, d, delta)
            elif d.channel == "analysis":
                state.reasoning.append(d.text)
                delta["reasoning_content"] = delta.get("reasoning_content", "") + d.text
            else:  # final, or a commentary preamble meant for the user
                state.content.append(d.text)
                delta["content"] = delta.get("content", "") + d.text
        finish = _chat_finish(state) if state.finish_reason is not None else None
        if not self.req.stream or (not delta and finish is None and not logprobs):
            return []
        lp = {"content": logprobs, "refusal": None} if logprobs else None
        return [sse(self._chunk([{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]))]

    def _tool_delta(self, state: ChoiceState, d: Delta, delta: dict) -> None:
        if d.tool_call_id not in state.call_index:
            state.call_index[d.tool_call_id] = len(state.tool_calls)
            name = d.recipient.removeprefix("functions.")
            state.tool_calls.append({"id": d.tool_call_id, "type": "function",
                                     "function": {"name": name, "arguments": ""}})
            delta.setdefault("tool_calls", []).append(
                {"index": state.call_index[d.tool_call_id], "id": d.tool_call_id, "type": "function",
                 "function": {"name": name, "arguments": d.text}})
        elif d.text:
            delta.setdefault("tool_calls", []).append(
                {"index": state.call_index[d.tool_call_id], "function": {"arguments": d.text}})
        state.tool_calls[state.call_index[d.tool_call_id]]["function"]["arguments"] += d.text

    def _chunk(self, choices: list[dict]) -> dict:
        chunk = {"id": self.req.request_id, "object": "chat.completion.chunk", "created": self.req.created,
                 "model": self.model, "choices": choices}
        if self.req.include_usage:
            chunk["usage"] = None
        return chunk

    def _totals(self) -> Usage:
        self.usage.completion_tokens = sum(c.num_tokens for c in self.choices)
        self.usage.reasoning_tokens = sum(c.reasoning_tokens for c in self.choices)
        return self.usage

    def finish(self) -> list:
        usage = self._totals().chat()
        if self.req.stream:
            return self._tail(usage)
        return [self._body(usage, _chat_finish)]

    def _tail(self, usage: dict) -> list[str]:
        return ([sse({**self._chunk([]), "usage": usage})] if self.req.include_usage else []) + [DONE]

    def _body(self, usage: dict, finish_of) -> dict:
        choices = []
        for i, c in enumerate(self.choices):
            message = {"role": "assistant", "content": "".join(c.content) if c.content or not c.tool_calls else None,
                       "refusal": None,
                       "reasoning_content": "".join(c.reasoning) or None}
            if c.tool_calls:
                message["tool_calls"] = [{**t, "function": dict(t["function"])} for t in c.tool_calls]
            logprobs = {"content": c.logprobs, "refusal": None} if self.top_logprobs is not None else None
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish_of(c)})
        return {"id": self.req.request_id, "object": "chat.completion", "created": self.req.created,
                "model": self.model, "choices": choices, "usage": usage}

    # ---- what the front door's accounting and output guard read (cluster/output/window.py) ----
    def cut(self, reason: str) -> list:
        """The items that end the answer here with `reason` (the state is left as it is)."""
        usage = self._totals().chat()
        if not self.req.stream:
            return [self._body(usage, lambda c: c.finish_reason and _chat_finish(c) or reason)]
        choices = [{"index": i, "delta": {} if c.role_sent else {"role": "assistant"}, "logprobs": None,
                    "finish_reason": reason} for i, c in enumerate(self.choices) if c.finish_reason is None]
        return ([sse(self._chunk(choices))] if choices else []) + self._tail(usage)

    def take_text(self) -> str:
        return drain(self.fresh)

    def usage_now(self) -> Usage:
        return self._totals()

    def tool_call_count(self) -> int:
        return sum(len(c.tool_calls) for c in self.choices)

    def finish_reason_now(self) -> str | None:
        return _chat_finish(self.choices[0]) if self.choices[0].finish_reason else None


def _in_content(parser, token: int) -> bool:
    """The token is text of the answer (a final or user-facing message), not reasoning, a header or a tool call."""
    message = parser.open_message
    return message is not None and message[0] != "analysis" and message[1] is None and token < FIRST_SPECIAL


def _chat_finish(state: ChoiceState) -> str:
    if state.tool_calls and state.finish_reason == "stop":
        return "tool_calls"
    return state.finish_reason or "stop"


class CompletionFormatter:
    """/v1/completions: chunks (`text_completion`) or one body."""

    def __init__(self, req, tokenizer, model: str):
        self.req, self.tokenizer, self.model = req, tokenizer, model
        n = req.sampling.get("n", 1)
        self.text, self.finish_reasons = [[] for _ in range(n)], [None] * n
        self.logprobs = [_empty_logprobs() for _ in range(n)] if req.sampling.get("logprobs") is not None else None
        self.usage = Usage()
        self._offsets = [0] * n
        self.fresh = watched_text(req)  # text made since take_text

    def feed(self, out: RequestOutput) -> list[str]:
        self.usage.prompt_tokens, self.usage.cached_tokens = len(out.prompt_token_ids), out.num_cached_tokens
        frames = []
        for s in out.outputs:
            self.usage.completion_tokens += len(s.token_ids)
            self.text[s.index].append(s.text)
            if self.fresh is not None:
                self.fresh.append(s.text)
            self.finish_reasons[s.index] = s.finish_reason
            logprobs = self._logprobs(s) if self.logprobs is not None else None
            if self.req.stream and (s.text or s.finish_reason or logprobs):
                frames.append(sse(self._chunk([{"index": s.index, "text": s.text, "logprobs": logprobs,
                                                "finish_reason": s.finish_reason}])))
        return frames

    def _logprobs(self, s) -> dict:
        part = _empty_logprobs()
        for token, lp in zip(s.token_ids, s.logprobs or []):
            piece = self.tokenizer.decode([token])
            part["tokens"].append(piece)
            part["token_logprobs"].append(lp.get(token))
            part["top_logprobs"].append({self.tokenizer.decode([t]): v for t, v in lp.items()})
            part["text_offset"].append(self._offsets[s.index])
            self._offsets[s.index] += len(piece)
        for key, values in part.items():
            self.logprobs[s.index][key] += values
        return part

    def _chunk(self, choices: list[dict]) -> dict:
        chunk = {"id": self.req.request_id, "object": "text_completion", "created": self.req.created,
                 "model": self.model, "choices": choices}
        if self.req.include_usage:
            chunk["usage"] = None
        return chunk

    def finish(self) -> list:
        usage = self.usage.chat()
        if self.req.stream:
            return self._tail(usage)
        return [self._body(usage, "stop")]

    def _tail(self, usage: dict) -> list[str]:
        return ([sse({**self._chunk([]), "usage": usage})] if self.req.include_usage else []) + [DONE]

    def _body(self, usage: dict, unfinished: str) -> dict:
        choices = [{"index": i, "text": "".join(t), "logprobs": self.logprobs[i] if self.logprobs else None,
                    "finish_reason": self.finish_reasons[i] or unfinished} for i, t in enumerate(self.text)]
        return {"id": self.req.request_id, "object": "text_completion", "created": self.req.created,
                "model": self.model, "choices": choices, "usage": usage}

    # ---- what the front door's accounting and output guard read (cluster/output/window.py) ----
    def cut(self, reason: str) -> list:
        """The items that end the answer here with `reason` (the state is left as it is)."""
        usage = self.usage.chat()
        if not self.req.stream:
            return [self._body(usage, reason)]
        choices = [{"index": i, "text": "", "logprobs": None, "finish_reason": reason}
                   for i, f in enumerate(self.finish_reasons) if f is None]
        return ([sse(self._chunk(choices))] if choices else []) + self._tail(usage)

    def take_text(self) -> str:
        return drain(self.fresh)

    def usage_now(self) -> Usage:
        return self.usage

    def tool_call_count(self) -> int:
        return 0

    def finish_reason_now(self) -> str | None:
        return self.finish_reasons[0]


def _empty_logprobs() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
