"""The tool loop: one response's generation, with the tools the server runs in between, inside the replica.

Flow: `run_with_tools(server, req)` for a /v1/responses request that offers built-in tools or ends with an open
built-in call -> `ToolSet.check` (400 before anything runs) -> MCP servers not yet listed in the conversation are
listed -> the prompt is rendered with the tools' namespaces -> the first engine step starts (before the StreamHead,
so a full engine queue is still retried elsewhere by the front door), unless a call must run first (the request
ended with one) -> head -> steps: the formatter turns the engine's tokens into items and events; a step that ends
(`<|call|>`) with a call to a built-in tool leaves it pending -> the tool runs (its progress events stream; the
call counts against max_tool_calls: past it the model is told the limit is reached) -> the next engine step's prompt
is this step's prompt + its tokens + the tool's answer + `<|start|>assistant` (token for token what the model saw, so
the prefix cache serves it all) and its max_tokens what is left of the response's -> until a step ends without a
built-in call, the token budget or the context is used up (incomplete), or the deadline passes (408). Closing the
generator (client gone, cancel) aborts the engine request, or stops the python cell that runs.
"""

import asyncio
import logging
import time

from cluster.errors import ApiError, from_value_error, overloaded
from cluster.output.deltas import StreamHead
from cluster.output.responses import ResponsesFormatter
from cluster.tools.harmony import answer_ids
from cluster.tools.result import ToolResult
from engine.async_llm import QueueFullError

log = logging.getLogger(__name__)


def uses_tools(req) -> bool:
    """Responses requests that offer a built-in tool, or that end with a built-in call the server must run."""
    if req.kind != "response" or req.output != "openai":
        return False
    builtin = req.builtin or {}
    return bool(builtin.get("python") or builtin.get("browser") or builtin.get("mcp")) or _open_call(req) is not None


def _open_call(req) -> dict | None:
    last = (req.messages or [{}])[-1]
    return last.get("builtin_call")


class _Step:
    """One engine request of the response."""

    def __init__(self, ids: list[int], stream, first):
        self.ids, self.stream, self.first = ids, stream, first
        self.output: list[int] = []  # the tokens this step generated


async def run_with_tools(server, req, times, deadline):
    loop = _Loop(server, req, deadline)
    try:
        step = await loop.prepare()
    except ApiError as err:
        deadline.cancel()
        yield err
        return
    yield StreamHead(server.replica, len(loop.first_ids))
    try:
        async for item in loop.run(step, times):
            yield item
    finally:
        deadline.cancel()
        await loop.close()


class _Loop:
    def __init__(self, server, req, deadline):
        self.server, self.req, self.deadline = server, req, deadline
        self.tools = server.tools
        self.formatter = ResponsesFormatter(req, server.tokenizer, server.spec.name)
        self.listings: list = []
        self.first_ids: list[int] = []
        self.generated = 0  # tokens all steps made so far
        self.steps = 0
        self.stream = None  # the running engine stream
        self.browser = None

    # ---- before the head ----
    async def prepare(self) -> _Step | None:
        """Checks, MCP listings and the first prompt; the first engine step unless a call runs first."""
        if self.deadline.expired:
            raise self.deadline.error()
        await self.tools.check(self.req)
        self.listings = [listing async for listing in self.tools.list_unlisted(self.req)]
        self.browser = self.tools.browser(self.req)
        self.first_ids = self.server._prompt_ids(self.req, self.tools.namespaces(self.req))
        params = self.server.sampling_params(self.req, self.first_ids)  # 400s (context, max_tokens) before the head
        if _open_call(self.req) is not None:
            return None
        return await self._start(self.first_ids, params)

    async def _start(self, ids: list[int], params) -> _Step:
        request_id = self.req.request_id if self.steps == 0 else f"{self.req.request_id}~t{self.steps}"
        self.steps += 1
        self.deadline.request_id = request_id
        try:
            stream = self.server.engine.generate({"prompt_token_ids": ids}, params, request_id=request_id)
            self.stream = stream
            first = await anext(stream)
        except QueueFullError as err:
            raise overloaded(429, str(err)) from None
        except ValueError as err:
            raise from_value_error(err, self.req.renames) from None
        if self.deadline.fired:
            raise self.deadline.error()
        return _Step(ids, stream, first)

    # ---- after the head ----
    async def run(self, step: _Step | None, times):
        self.times = times
        try:
            async for item in self._steps(step):
                yield item
        except ApiError as err:  # a later step refused (engine queue full, a bad value): said in the stream
            yield err

    async def _steps(self, step: _Step | None):
        fmt = self.formatter
        for server, tools, error in self.listings:
            for frame in fmt.listed(server, tools, error):
                yield frame
        if step is None:  # the request ended with a call: run it, then the model reads its answer
            for frame in fmt.open_call(_open_call(self.req)):
                yield frame
            async for frame in self._run_pending():
                yield frame
            step = await self._next(self._render_with_answer())
        while step is not None:
            async for frame in self._feed(step):
                yield frame
            if self.deadline.fired:
                yield self.deadline.error()
                return
            if fmt.pending is None or fmt.finish_reason != "stop":
                self._ending = fmt.finish()
                break
            async for frame in self._run_pending():
                yield frame
            call, result = self._last_call, self._last_result
            step = await self._next(step.ids + step.output + answer_ids(self.server.tokenizer, call.recipient,
                                                                        call.channel, result.text))
        for item in self._ending:
            yield item

    async def _feed(self, step: _Step):
        out, last = step.first, None
        try:
            while True:
                now = time.monotonic()
                count = sum(len(s.token_ids) for s in out.outputs)
                self.server.metrics.on_tokens(count, None if last is None else now - last)
                last = now if count else last
                step.output += [int(t) for t in out.outputs[0].token_ids]
                for frame in self.formatter.feed(out):
                    yield frame
                if out.finished:
                    self._record_times(out.metrics)
                    break
                out = await anext(step.stream)
        finally:
            await step.stream.aclose()
            self.stream = None
        self.generated += len(step.output)

    def _record_times(self, metrics: dict) -> None:
        if self.times.first_token is None:
            self.times.scheduled, self.times.first_token = metrics.get("scheduled"), metrics.get("first_token")
        self.times.finished = metrics.get("finished")

    times = None
    _ending: list = []
    _last_call = None
    _last_result: ToolResult | None = None

    async def _run_pending(self):
        fmt = self.formatter
        call = fmt.pending
        for frame in fmt.running():
            yield frame
        if fmt.tool_calls >= self.tools.max_calls(self.req):
            result = ToolResult(f"error: this response may make at most {self.tools.max_calls(self.req)} tool "
                                "calls (max_tool_calls); answer with what you have", True, {})
        else:
            result = await self._within_deadline(self.tools.run(call, self.req, self.browser))
        self._last_call, self._last_result = call, result
        for frame in fmt.resolve(result):
            yield frame

    async def _within_deadline(self, coro) -> ToolResult:
        remaining = self.deadline.remaining()
        try:
            return await asyncio.wait_for(coro, remaining) if remaining is not None else await coro
        except TimeoutError:
            self.deadline.fired = True
            return ToolResult("error: the response's deadline passed while the tool ran", True, {})

    def _render_with_answer(self) -> list[int]:
        """The first prompt when the request ended with a call: the conversation with the call's answer."""
        call, result = self._last_call, self._last_result
        answer = {"role": "tool", "content": result.text,
                  "builtin_result": {"author": call.recipient, "channel": call.channel}}
        self.req.messages = [*self.req.messages, answer]
        return self.server._prompt_ids(self.req, self.tools.namespaces(self.req))

    async def _next(self, ids: list[int]) -> _Step | None:
        """The next engine step, or None when the response ends here (deadline, budget, context: `finish` items
        are yielded by the caller through the formatter)."""
        self.formatter.next_step()
        if self.deadline.fired or self.deadline.expired:
            self._ending = [self.deadline.error()]
            return None
        budget = self.req.sampling.get("max_tokens")
        if (budget is not None and self.generated >= budget) or len(ids) >= self.server.engine.max_model_len - 1:
            self._ending = self.formatter.finish("incomplete")
            return None
        params = self.server.sampling_params(self.req, ids, self.generated)
        return await self._start(ids, params)

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        if self.times is not None:
            self.server.metrics.on_finished(len(self.first_ids), self.formatter.finish_reason or "abort", self.times)
