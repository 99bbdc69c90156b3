"""The contract between the runner and a server: a `Target` streams one request as timed deltas.

HTTP (OpenAI-compatible SSE) is implemented in http_target.py, gRPC (gptoss.v1.Inference Chat) in grpc_target.py.
A target builds its request from `TargetRequest`, yields `Accepted` once the server has taken the request (HTTP 200
headers, gRPC initial metadata), a `Delta` per streamed message (stamped with time.perf_counter() on arrival,
channel 'reasoning' or 'final'), a `Finish` with the finish reason the server gave, a `Usage` if the server reports
counts, and raises `TargetError` with one of ERROR_KINDS on failure, with the server's retry hint when it sent one
(HTTP 429 -> http_429, 503 -> http_503; gRPC RESOURCE_EXHAUSTED -> http_429, UNAVAILABLE -> http_503,
DEADLINE_EXCEEDED -> http_408; a stream that ends cleanly without its end marker -> stream_broken; a connection that
breaks mid-stream -> stream_reset). loadtest/accounting.py
classifies each request from these (completed, rejected, failed, lost).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# How a failed request is counted. http_* come from the response status before any token; the rest from transport.
ERROR_KINDS = (
    "http_429",       # rate limited / queue full
    "http_503",       # unavailable (overloaded, or a harmony parse error surfaced as 503)
    "http_408",       # the server's own request timeout
    "http_other",     # any other non-2xx status
    "stream_broken",  # the stream ended cleanly but without its end marker (no [DONE]): a silent truncation
    "stream_reset",   # the connection broke mid-stream (reset, or closed before the body ended): the client sees it
    "stream_error",   # the stream carried an error object instead of tokens
    "timeout",        # the load tester's --request-timeout expired
    "connect",        # could not connect or send
)


@dataclass
class TargetRequest:
    request_id: str
    model: str
    messages: list[dict]      # chat history ending with this turn's user message
    prompt: str               # the same conversation flattened, for the completions API
    max_tokens: int
    target: str = ""          # the target that sent it (RoundRobin fills it in; recorded per request)


@dataclass
class Delta:
    t: float                  # time.perf_counter() when the chunk was parsed
    channel: str              # 'reasoning' (analysis) or 'final'
    text: str


@dataclass
class Accepted:
    t: float                  # time.perf_counter() when the server accepted the request (200 headers, gRPC metadata)


@dataclass
class Finish:
    reason: str               # the server's finish reason (stop, length, tool_calls, ...): the stream ended on purpose


@dataclass
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None      # all generated tokens, reasoning included
    reasoning_tokens: int | None       # completion_tokens_details.reasoning_tokens when reported


Event = Accepted | Delta | Finish | Usage


class TargetError(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.status = kind, message, status
        self.retry_after_s = retry_after_s    # the server's retry hint (Retry-After, retry-after-ms), if any


def kind_of_status(status: int) -> str:
    return {429: "http_429", 503: "http_503", 408: "http_408"}.get(status, "http_other")


class Target(Protocol):
    name: str                 # 'http-chat', 'http-completions', 'grpc', ... (goes into the result file)

    def stream(self, request: TargetRequest) -> AsyncIterator[Accepted | Delta | Finish | Usage]:
        """Sends `request`, yields Accepted when the server takes it, its deltas as they arrive, its Finish, then at
        most one Usage."""
        ...

    async def aclose(self) -> None: ...


class RoundRobin:
    """Several targets (e.g. the HTTP API and the gRPC gateway of one cluster), each request to the next in turn;
    the request's `target` names the one that sent it."""

    def __init__(self, targets: list) -> None:
        self.targets, self.sent = targets, 0
        self.name = "+".join(t.name for t in targets)

    def stream(self, request: TargetRequest):
        target = self.targets[self.sent % len(self.targets)]
        self.sent += 1
        request.target = target.name
        return target.stream(request)

    async def warm(self) -> None:
        for t in self.targets:
            if getattr(t, "warm", None) is not None:
                await t.warm()

    async def aclose(self) -> None:
        for t in self.targets:
            await t.aclose()
