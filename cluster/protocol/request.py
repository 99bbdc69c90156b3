"""`GenerateRequest`: the one validated object a front door hands a replica (and the router reads), whatever the
protocol, plus the routing keys made from its prompt."""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["chat", "completion", "response"]


@dataclass
class GenerateRequest:
    """A validated request, as the front door sends it to a replica (and the router reads it)."""

    kind: Kind
    model: str
    request_id: str  # also the engine request id: "chatcmpl-...", "cmpl-..." or "resp_..."
    sampling: dict  # SamplingParams keyword arguments (checked without the model); max_tokens may be absent
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a final chunk with usage
    prompt: str | list[int] | None = None  # completions
    messages: list[dict] | None = None  # chat (responses input converted to chat messages)
    tools: list[dict] | None = None  # chat-style function tools actually offered (tool_choice applied)
    reasoning_effort: str | None = None  # None: the model's default
    renames: dict[str, str] = field(default_factory=dict)  # engine field -> request field, for error params
    prefix_hashes: list[int] = field(default_factory=list)  # chained hashes of prompt chunks (for routing)
    created: int = 0  # unix seconds
    received: float | None = None  # unix time the front door received it (TTFT and queue time count from here)
    deadline: float | None = None  # unix time: past it the replica aborts the engine request and yields a 408
    output: Literal["openai", "deltas"] = "openai"  # deltas: plain token/channel deltas for the gRPC gateway
    parse_harmony: bool = False  # completion kind: the prompt is harmony; stop at the turn's end, parse channels
    avoid_replicas: list[str] = field(default_factory=list)  # replica ids the router ranks last (a retry)
    routed_replica: str | None = None  # set in the caller's process by the router: where the request went
    echo: dict = field(default_factory=dict)  # request fields the response object repeats (Responses API)
    caller: str = "anonymous"  # who sent it: cluster.auth's identity of the API key (stamped by the front door)
    builtin: dict = field(default_factory=dict)  # Responses built-in tools offered (protocol.response_items.builtin_of)
    max_tool_calls: int | None = None  # Responses: built-in and MCP tool calls at most in this response
    conversation: str | None = None  # Responses: the conversation's first response id (keys the python session)
    include: list[str] = field(default_factory=list)  # Responses `include`: extra output data to show


def routing_text(req: GenerateRequest) -> str:
    """A canonical text of what the request's prompt starts with (same text <=> same prompt prefix)."""
    if req.messages is None:
        return req.prompt if isinstance(req.prompt, str) else " ".join(map(str, req.prompt or []))
    head = json.dumps([req.reasoning_effort, req.tools], sort_keys=True, default=str)
    return head + "".join(json.dumps(m, sort_keys=True, default=str) for m in req.messages)


def prefix_hashes(text: str, chunk: int = 256, limit: int = 64) -> list[int]:
    """Chained 64-bit hashes of the first `limit` whole chunks: equal hash i <=> equal first (i+1) chunks."""
    out, h = [], b""
    for i in range(min(len(text) // chunk, limit)):
        h = hashlib.blake2b(h + text[i * chunk:(i + 1) * chunk].encode("utf-8", "surrogatepass"),
                            digest_size=8).digest()
        out.append(int.from_bytes(h, "little"))
    return out
