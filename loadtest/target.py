"""The contract between the runner and a server: a `Target` streams one request as timed deltas.

HTTP (OpenAI-compatible SSE) is implemented in http_target.py. A gRPC target implements the same protocol: build its
request from `TargetRequest`, yield a `Delta` per streamed message (stamped with time.perf_counter() on arrival,
channel 'reasoning' or 'final'), a `Usage` if the server reports counts, and raise `TargetError` with one of
ERROR_KINDS on failure (map gRPC RESOURCE_EXHAUSTED to http_429, UNAVAILABLE to http_503, DEADLINE_EXCEEDED to
timeout, a stream that ends without its final message to stream_broken).
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
    "stream_broken",  # the connection closed before the stream's end marker
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


@dataclass
class Delta:
    t: float                  # time.perf_counter() when the chunk was parsed
    channel: str              # 'reasoning' (analysis) or 'final'
    text: str


@dataclass
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None      # all generated tokens, reasoning included
    reasoning_tokens: int | None       # completion_tokens_details.reasoning_tokens when reported


class TargetError(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.status = kind, message, status


def kind_of_status(status: int) -> str:
    return {429: "http_429", 503: "http_503", 408: "http_408"}.get(status, "http_other")


class Target(Protocol):
    name: str                 # 'http-chat', 'http-completions', 'grpc', ... (goes into the result file)

    def stream(self, request: TargetRequest) -> AsyncIterator[Delta | Usage]:
        """Sends `request` and yields its deltas as they arrive, then at most one Usage."""
        ...

    async def aclose(self) -> None: ...
