"""The OpenAI-compatible HTTP target: POST /v1/chat/completions or /v1/completions with stream=true and
stream_options.include_usage, read as server-sent events.

Chat deltas carry reasoning in `reasoning_content` (or `reasoning`, newer vLLM) and the answer in `content`;
completions carry `text` (counted as final). The usage chunk's completion_tokens_details.reasoning_tokens is taken
when present; a choice's `finish_reason` becomes a `Finish`. A 200 status is the server's acceptance (`Accepted`);
an error status carries its Retry-After header as the retry hint. A stream must end with `data: [DONE]`; a body
that ends cleanly without it counts as stream_broken; a connection that breaks (reset, or closed before the body
ended) after the request was sent counts as stream_reset (connect is only a connection never made).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx

from loadtest.target import Accepted, Delta, Event, Finish, TargetError, TargetRequest, Usage, kind_of_status

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class HttpTarget:
    def __init__(self, url: str, model: str, api: str = "chat", api_key: str | None = None,
                 timeout_s: float = 300.0, extra_body: dict | None = None, ignore_eos: bool = False) -> None:
        if api not in PATHS:
            raise ValueError(f"--api must be chat or completions, got {api!r}")
        self.name, self.api, self.model = f"http-{api}", api, model
        self.extra_body = dict(extra_body or {}) | ({"ignore_eos": True} if ignore_eos else {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, trust_env=False,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024))

    def body(self, req: TargetRequest) -> dict:
        body = {"model": self.model, "max_tokens": req.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        body |= {"messages": req.messages} if self.api == "chat" else {"prompt": req.prompt}
        return body | self.extra_body

    async def stream(self, req: TargetRequest) -> AsyncIterator[Event]:
        try:
            async with self.client.stream("POST", PATHS[self.api], json=self.body(req)) as resp:
                if resp.status_code >= 400:
                    detail = (await resp.aread())[:200].decode(errors="replace")
                    raise TargetError(kind_of_status(resp.status_code), f"HTTP {resp.status_code} {detail}",
                                      resp.status_code, retry_after(resp.headers.get("retry-after")))
                yield Accepted(time.perf_counter())
                async for event in self._events(resp):
                    yield event
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
            raise TargetError(kind, f"httpx {type(exc).__name__}") from exc
        except httpx.ConnectError as exc:
            raise TargetError("connect", str(exc) or type(exc).__name__) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise TargetError("stream_reset", str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise TargetError("connect", str(exc) or type(exc).__name__) from exc

    async def _events(self, resp: httpx.Response) -> AsyncIterator[Event]:
        """Parsed events until `data: [DONE]`; the body is then read to its end so the connection is reused."""
        done = False
        async for line in resp.aiter_lines():
            if done or not line.startswith("data:"):
                continue
            t = time.perf_counter()
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError as exc:
                raise TargetError("stream_error", f"bad JSON in stream: {data[:100]!r}") from exc
            if chunk.get("error"):
                raise TargetError("stream_error", json.dumps(chunk["error"])[:200])
            for event in parse_chunk(chunk, t):
                yield event
        if not done:
            raise TargetError("stream_broken", "stream ended without data: [DONE]")

    async def warm(self) -> None:
        """One GET /v1/models before the clock starts, so the client's first-use costs (the connection, lazily
        imported protocol code: tens of ms in Python) are not charged to the first measured request. Its outcome
        is ignored; a server that is down shows in the run's errors."""
        try:
            await self.client.get("/v1/models")
        except httpx.HTTPError:
            pass

    async def aclose(self) -> None:
        await self.client.aclose()


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the delay form; an HTTP date counts as no hint)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_chunk(chunk: dict, t: float) -> list[Event]:
    """The deltas, finish reason and usage in one parsed SSE chunk of either API."""
    events: list[Event] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        if delta is None:                     # completions API
            if choice.get("text"):
                events.append(Delta(t, "final", choice["text"]))
        else:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                events.append(Delta(t, "reasoning", reasoning))
            if delta.get("content"):
                events.append(Delta(t, "final", delta["content"]))
        if choice.get("finish_reason"):
            events.append(Finish(choice["finish_reason"]))
    usage = chunk.get("usage")
    if usage:
        details = usage.get("completion_tokens_details") or {}
        events.append(Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"),
                            details.get("reasoning_tokens")))
    return events
