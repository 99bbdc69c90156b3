"""Replica-side output formatting: engine `RequestOutput`s -> what a protocol sends, made where the tokens are.

Every formatter has one interface, `Formatter`: built per request as `cls(req, tokenizer, model)`; `feed(out)`
returns the items for one engine output (SSE frames when streaming; nothing while a body is being accumulated;
plain deltas for gRPC); `finish()` returns the closing items (usage chunk and `[DONE]`, the body, or `StreamEnd`).
`formatter_for(req)` picks the class: `openai` (chat.completion / text_completion), `responses` (the Responses
API's response object and events), `deltas` (token and harmony channel deltas the gRPC gateway turns into protobuf).
A mid-stream error (the request's deadline) is not a formatter's business: the replica yields an `ApiError` item and
each protocol writes it its own way.
"""

from typing import Protocol

from engine.outputs import RequestOutput


class Formatter(Protocol):
    def __init__(self, req, tokenizer, model: str) -> None: ...

    def feed(self, out: RequestOutput) -> list: ...

    def finish(self) -> list: ...


def formatter_for(req) -> type[Formatter]:
    """The formatter class of a `cluster.protocol.GenerateRequest`."""
    from cluster.output.deltas import DeltaFormatter  # noqa: PLC0415 - the three import each other's helpers
    from cluster.output.openai import ChatFormatter, CompletionFormatter  # noqa: PLC0415
    from cluster.output.responses import ResponsesFormatter  # noqa: PLC0415

    if req.output == "deltas":
        return DeltaFormatter
    return {"chat": ChatFormatter, "completion": CompletionFormatter, "response": ResponsesFormatter}[req.kind]
