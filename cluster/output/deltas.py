"""Replica-side output for the gRPC gateway: engine outputs -> plain token/channel deltas (no protobuf here).

Flow: `LLMServer.generate` of a request with `output="deltas"` yields a `StreamHead` (after the first token) ->
`DeltaFormatter.feed` turns each engine `RequestOutput` into one `SampleDelta` per sample that moved (chat, and
completions with `parse_harmony`, run every token through a harmony stream parser into `Part`s) ->
`DeltaFormatter.finish` yields the `StreamEnd` with usage. The gateway (cluster/grpc/convert.py) builds the
protobuf messages; keeping these plain keeps protobuf out of the replicas and the pickles small.
"""

from dataclasses import dataclass, field

from cluster.output.openai import Usage

from engine.outputs import RequestOutput
from engine.text.harmony_stream import Delta


@dataclass
class StreamHead:
    """First item of a stream that started: the engine produced its first token."""

    replica: str  # the serving replica's id (the gateway returns it as initial metadata x-gptoss-replica)
    prompt_tokens: int  # tokens in the prompt (the gateway charges them to the caller's token bucket)


@dataclass
class Part:
    """New text of one harmony message (a `Delta` without the parser's objects)."""

    channel: str | None  # "analysis" | "commentary" | "final"; None outside any message
    text: str
    recipient: str | None = None  # e.g. "functions.get_weather": the text is that call's arguments
    tool_call_id: str | None = None  # set whenever recipient is
    complete: bool = False  # this part closes the tool call

    @classmethod
    def of(cls, delta: Delta) -> "Part":
        return cls(delta.channel, delta.text, delta.recipient, delta.tool_call_id,
                   delta.completed_tool_call is not None)


@dataclass
class SampleDelta:
    """What one sample (of n) added in one engine step."""

    index: int
    token_ids: list[int]
    text: str  # the engine's detokenized text of token_ids
    parts: list[Part] = field(default_factory=list)  # harmony parse of token_ids (chat, parse_harmony)
    logprobs: list[dict[int, float]] | None = None  # per token: {sampled id and top-n ids: logprob}
    finish_reason: str | None = None  # "stop", "length", "abort", "tool_calls" on the sample's last delta


@dataclass
class StreamEnd:
    """Last item of a finished stream."""

    usage: Usage


class DeltaFormatter:
    """The `output="deltas"` formatter (cluster.output.Formatter)."""

    def __init__(self, req, tokenizer, model: str):
        n = req.sampling.get("n", 1)
        self.parsers = [tokenizer.stream_parser() for _ in range(n)] \
            if req.kind != "completion" or req.parse_harmony else None
        self.called = [False] * n  # the sample wrote a tool call: "stop" becomes "tool_calls"
        self.usage = Usage()

    def feed(self, out: RequestOutput) -> list[SampleDelta]:
        self.usage.prompt_tokens, self.usage.cached_tokens = len(out.prompt_token_ids), out.num_cached_tokens
        deltas = []
        for s in out.outputs:
            self.usage.completion_tokens += len(s.token_ids)
            parts = self._parse(s) if self.parsers is not None else []
            finish = s.finish_reason
            if finish == "stop" and self.called[s.index]:
                finish = "tool_calls"
            if s.token_ids or finish is not None or parts:
                deltas.append(SampleDelta(s.index, [int(t) for t in s.token_ids], s.text, parts, s.logprobs, finish))
        return deltas

    def _parse(self, s) -> list[Part]:
        parser, parts = self.parsers[s.index], []
        for token in s.token_ids:
            new = parser.feed(int(token))
            self.usage.reasoning_tokens += any(d.channel == "analysis" and d.recipient is None for d in new)
            parts += new
        if s.finish_reason is not None:
            parts += parser.finish()
        self.called[s.index] |= any(d.recipient is not None for d in parts)
        return [Part.of(d) for d in parts if d.text or d.completed_tool_call is not None or d.recipient is not None]

    def finish(self) -> list[StreamEnd]:
        return [StreamEnd(self.usage)]
