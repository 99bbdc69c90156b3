"""A deterministic fake OpenAI-compatible server for tests, demos and the generator-ceiling benchmark.

Stdlib asyncio only: HTTP/1.1 keep-alive, SSE over chunked transfer encoding, bound to 127.0.0.1. A `script`
callable decides each reply (status and retry hint, timed chunks per channel, the finish reason or a stream that ends
cleanly without one, a cut mid-stream, a stream that hangs, a stall of the whole server);
token counts are words (one token per word, as loadtest.tokenizer.WordTokenizer counts). GET /metrics reports
gptoss_num_requests_waiting (requests in flight) and gptoss_kv_cache_usage_perc (1% per request in flight).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.tokenizer import WORDS

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Chunk:
    delay_s: float            # after the previous chunk (the first: after the request was read)
    text: str                 # words; each word is one token
    channel: str = "final"    # 'reasoning' or 'final'

    @property
    def tokens(self) -> int:
        return len(self.text.split())


@dataclass
class Reply:
    status: int = 200
    chunks: list[Chunk] = field(default_factory=list)
    usage: bool = True        # send the usage chunk when the request asks for it
    cut_after: int | None = None   # close the connection after this many chunks (no [DONE], no end chunk)
    block_s: float = 0.0      # time.sleep before replying: the whole server stalls (accepts included)
    error_after: int | None = None   # send an SSE error object after this many chunks (as vLLM does mid-stream)
    finish: str | None = "stop"      # the last chunk's finish_reason; None: [DONE] without one (a silent drop)
    done_marker: bool = True         # send data: [DONE]; False: the body ends cleanly without it
    hang_after: int | None = None    # after this many chunks send nothing more, keeping the connection open
    retry_after: str | None = None   # Retry-After header of an error status


Script = Callable[[int, dict], Reply]    # (request index from 0, request body) -> reply


def words(n: int, start: int = 0) -> str:
    return "".join(WORDS[(start + i) % len(WORDS)] + " " for i in range(n))


def steady_script(tokens: int = 64, ttft_s: float = 0.05, itl_s: float = 0.01, reasoning: int = 0) -> Script:
    """One token per chunk: the first after ttft_s, then one every itl_s; the first `reasoning` are reasoning."""
    def script(index: int, body: dict) -> Reply:
        n = max(1, min(tokens, int(body.get("max_tokens") or tokens)))
        return Reply(chunks=[Chunk(ttft_s if i == 0 else itl_s, words(1, i), "reasoning" if i < reasoning
                                   else "final") for i in range(n)])
    return script


class FakeServer:
    """Runs on its own thread and event loop: `with FakeServer(script) as srv: srv.url`."""

    def __init__(self, script: Script, port: int = 0) -> None:
        self.script, self.port = script, port
        self.counter = itertools.count()
        self.in_flight = 0
        self.received: list[float] = []      # time.perf_counter() when each request was read
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await read_request(reader):
                if not await self._handle(*request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answers one request; False when the connection must close."""
        if method == "GET" and path == "/metrics":
            text = (f"# TYPE gptoss_num_requests_waiting gauge\ngptoss_num_requests_waiting {self.in_flight}\n"
                    f"gptoss_kv_cache_usage_perc {min(1.0, self.in_flight / 100):.2f}\n")
            await send_full(writer, 200, text.encode(), "text/plain; version=0.0.4")
            return True
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await send_full(writer, 404, b'{"error": {"message": "not found"}}')
            return True
        self.received.append(time.perf_counter())
        req = json.loads(body)
        reply = self.script(next(self.counter), req)
        if reply.block_s:
            time.sleep(reply.block_s)
        self.in_flight += 1
        try:
            return await self._reply(reply, req, path == "/v1/chat/completions", writer)
        finally:
            self.in_flight -= 1

    async def _reply(self, reply: Reply, req: dict, chat: bool, writer: asyncio.StreamWriter) -> bool:
        if reply.status != 200:
            await send_full(writer, reply.status, json.dumps({"error": {"message": "scripted",
                                                                        "code": reply.status}}).encode(),
                            headers={"Retry-After": reply.retry_after} if reply.retry_after else None)
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        events = [(c.delay_s, sse(chunk_json(c, chat))) for c in reply.chunks]
        if reply.error_after is not None:
            events[reply.error_after:] = [(0.0, sse({"error": {"message": "scripted error", "code": 503}}))]
        if reply.cut_after is not None:
            await write_events(writer, events[:reply.cut_after])
            return False
        if reply.hang_after is not None:
            await write_events(writer, events[:reply.hang_after])
            await asyncio.Event().wait()          # until the client gives up (the task is cancelled on close)
        if reply.finish and reply.error_after is None:
            events.append((0.0, sse(finish_json(reply.finish, chat))))
        if reply.usage and (req.get("stream_options") or {}).get("include_usage"):
            events.append((0.0, sse(usage_json(reply, req))))
        if reply.done_marker:
            events.append((0.0, b"data: [DONE]\n\n"))
        await write_events(writer, events)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def chunk_json(c: Chunk, chat: bool) -> dict:
    if not chat:
        return {"object": "text_completion", "choices": [{"index": 0, "text": c.text, "finish_reason": None}]}
    delta = {"reasoning_content": c.text} if c.channel == "reasoning" else {"content": c.text}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def finish_json(reason: str, chat: bool) -> dict:
    if not chat:
        return {"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": reason}]}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def usage_json(reply: Reply, req: dict) -> dict:
    prompt = req.get("prompt") or " ".join(str(m.get("content", "")) for m in req.get("messages", []))
    out = sum(c.tokens for c in reply.chunks)
    reasoning = sum(c.tokens for c in reply.chunks if c.channel == "reasoning")
    return {"choices": [], "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": out,
                                     "total_tokens": len(prompt.split()) + out,
                                     "completion_tokens_details": {"reasoning_tokens": reasoning}}}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def write_events(writer: asyncio.StreamWriter, events: list[tuple[float, bytes]]) -> None:
    """Writes each event as one HTTP chunk after its delay; events with no delay are batched into one write."""
    pending = b""
    for delay, data in events:
        if delay > 0:
            if pending:
                writer.write(pending)
                await writer.drain()
                pending = b""
            await asyncio.sleep(delay)
        pending += f"{len(data):x}\r\n".encode() + data + b"\r\n"
    writer.write(pending)
    await writer.drain()


async def send_full(writer: asyncio.StreamWriter, status: int, body: bytes,
                    content_type: str = "application/json", headers: dict | None = None) -> None:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """(method, path, body) of the next request on a keep-alive connection, None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return method, path, await reader.readexactly(length) if length else b""


def serve_forever(port: int, script: Script) -> None:
    with FakeServer(script, port) as server:
        print(server.url, flush=True)
        server._thread.join()
