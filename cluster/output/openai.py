"""Engine outputs -> OpenAI chat-completion and completion bodies or SSE chunks.

Flow: the replica feeds each `RequestOutput` delta to `formatter.feed` (chat: every sample's new token ids go
through its own harmony stream parser, so analysis text becomes `reasoning_content`, final text `content`, and
commentary addressed to `functions.*` becomes `tool_calls`) -> streaming returns SSE frames at once, otherwise
the formatter accumulates -> `formatter.finish()` returns the closing frames (usage chunk, `[DONE]`) or the body.
"""

import json
from dataclasses import dataclass, field

from engine.outputs import RequestOutput
from engine.text.harmony_stream import Delta


def sse(payload: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"


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


class ChatFormatter:
    """/v1/chat/completions: chunks (`chat.completion.chunk`) or one `chat.completion`."""

    def __init__(self, req, tokenizer, model: str):
        self.req, self.tokenizer, self.model = req, tokenizer, model
        n = req.sampling.get("n", 1)
        self.choices = [ChoiceState(tokenizer.stream_parser()) for _ in range(n)]
        self.usage = Usage()

    def feed(self, out: RequestOutput) -> list[str]:
        self.usage.prompt_tokens, self.usage.cached_tokens = len(out.prompt_token_ids), out.num_cached_tokens
        frames = []
        for sample in out.outputs:
            state = self.choices[sample.index]
            deltas = []
            for token in sample.token_ids:
                new = state.parser.feed(int(token))
                state.reasoning_tokens += any(d.channel == "analysis" and d.recipient is None for d in new)
                deltas += new
            state.num_tokens += len(sample.token_ids)
            if sample.finish_reason is not None:
                deltas += state.parser.finish()
                state.finish_reason = sample.finish_reason
            frames += self._apply(sample.index, state, deltas)
        return frames if self.req.stream else []

    def _apply(self, index: int, state: ChoiceState, deltas: list[Delta]) -> list[str]:
        delta: dict = {}
        if not state.role_sent:
            delta["role"], state.role_sent = "assistant", True
        for d in deltas:
            if d.recipient is not None:
                self._tool_delta(state, d, delta)
            elif d.channel == "analysis":
                state.reasoning.append(d.text)
                delta["reasoning_content"] = delta.get("reasoning_content", "") + d.text
            else:  # final, or a commentary preamble meant for the user
                state.content.append(d.text)
                delta["content"] = delta.get("content", "") + d.text
        finish = _chat_finish(state) if state.finish_reason is not None else None
        if not self.req.stream or (not delta and finish is None):
            return []
        return [sse(self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]))]

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
            tail = [sse({**self._chunk([]), "usage": usage})] if self.req.include_usage else []
            return tail + [DONE]
        choices = []
        for i, c in enumerate(self.choices):
            message = {"role": "assistant", "content": "".join(c.content) if c.content or not c.tool_calls else None,
                       "refusal": None,
                       "reasoning_content": "".join(c.reasoning) or None}
            if c.tool_calls:
                message["tool_calls"] = c.tool_calls
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": _chat_finish(c)})
        return [{"id": self.req.request_id, "object": "chat.completion", "created": self.req.created,
                 "model": self.model, "choices": choices, "usage": usage}]


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

    def feed(self, out: RequestOutput) -> list[str]:
        self.usage.prompt_tokens, self.usage.cached_tokens = len(out.prompt_token_ids), out.num_cached_tokens
        frames = []
        for s in out.outputs:
            self.usage.completion_tokens += len(s.token_ids)
            self.text[s.index].append(s.text)
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
            tail = [sse({**self._chunk([]), "usage": usage})] if self.req.include_usage else []
            return tail + [DONE]
        choices = [{"index": i, "text": "".join(t), "logprobs": self.logprobs[i] if self.logprobs else None,
                    "finish_reason": self.finish_reasons[i] or "stop"} for i, t in enumerate(self.text)]
        return [{"id": self.req.request_id, "object": "text_completion", "created": self.req.created,
                 "model": self.model, "choices": choices, "usage": usage}]


def _empty_logprobs() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
