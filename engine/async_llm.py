"""The asynchronous engine API: many concurrent callers, one engine loop in a background thread.

    engine = AsyncLLM(model=DIR, dtype="bfloat16")
    async for out in engine.generate("Hello", SamplingParams(max_tokens=32), request_id="a"):
        print(out.outputs[0].text, end="")          # deltas: only what is new since the last output

Callers hand commands (add, abort) to the loop thread through a queue; the loop applies them between steps, runs
`EngineCore.step()` while there is work, and posts each request's new output to its caller's asyncio queue with
`call_soon_threadsafe`. A caller that stops iterating (cancelled, disconnected) aborts its request, which returns
the request's KV blocks at the next step boundary. If a step raises, every in-flight request fails with
`EngineDeadError` and the engine reports itself unhealthy (with several ranks: also when one has died or hung,
which the collective timeout turns into a failed step).
"""

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.config import EngineConfig
from engine.engine_core import EngineCore, PromptType, engine_config
from engine.request import Request, merge_outputs
from engine.sampling_params import SamplingParams
from engine.scheduler import QueueFullError, SchedulerStats

log = logging.getLogger(__name__)
EngineStats = SchedulerStats
__all__ = ["AsyncLLM", "EngineDeadError", "EngineStats", "QueueFullError"]


class EngineDeadError(RuntimeError):
    """The engine loop failed; requests in flight cannot complete."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # RequestOutput deltas, or an exception to raise in the caller
    children: list[Request]

    def post(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLM:
    def __init__(self, model: str | Path | None = None, *, config: EngineConfig | None = None, **engine_args):
        self.core = EngineCore(engine_config(model, config, **engine_args))
        self.tokenizer, self.config = self.core.tokenizer, self.core.config
        self.max_model_len = self.core.max_model_len  # context limit: prompt + generated tokens
        self.max_tokens_per_sequence = self.core.max_tokens_per_sequence  # most tokens one sequence's KV fits
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # parent request id -> its caller's stream
        self._stats = self.core.stats()
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gptoss-engine", daemon=True)
        self._thread.start()

    # ---- caller side ----
    @property
    def healthy(self) -> bool:
        return self._error is None and self._thread.is_alive() and self.core.healthy

    def stats(self) -> EngineStats:
        return self._stats

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                       request_id: str | None = None):
        """Yield RequestOutput deltas until the request (all n samples) finishes. Invalid input raises ValueError
        and a full waiting queue QueueFullError, both before the first output."""
        if not self.healthy:
            raise EngineDeadError(f"the engine is not running: {self._error!r}")
        children = self.core.make_requests(prompt, sampling_params or SamplingParams(), request_id)
        rid = children[0].parent_id
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), children)
        admitted = stream.loop.create_future()
        self._commands.put(("add", rid, stream, admitted))
        await admitted  # raises QueueFullError or a duplicate-id ValueError
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(("abort", rid, None, None))

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason "abort"."""
        self._commands.put(("abort", request_id, None, None))

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self._commands.put(("wake", None, None, None))
        self._thread.join(timeout)
        self.core.shutdown()

    # ---- engine thread ----
    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._apply_commands(block=not self.core.has_work)
                if self.core.has_work:
                    self._deliver(self.core.step())
                self._stats = self.core.stats()
        except Exception as e:  # noqa: BLE001 - any failure ends the engine; callers get a clear error
            log.exception("engine loop failed")
            self._error = e
            for stream in list(self._streams.values()):
                stream.post(EngineDeadError(f"engine step failed: {e!r}"))
            self._streams.clear()

    def _apply_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, kind: str, rid: str | None, stream: _Stream | None, admitted) -> None:
        if kind == "add":
            try:
                if rid in self._streams:
                    raise ValueError(f"request_id {rid!r} is already in use")
                self.core.add(stream.children)
            except (QueueFullError, ValueError) as e:
                self.core.abort([c.request_id for c in stream.children])
                stream.loop.call_soon_threadsafe(_settle, admitted, e)
                return
            self._streams[rid] = stream
            stream.loop.call_soon_threadsafe(_settle, admitted, None)
        elif kind == "abort" and rid in self._streams:
            stream = self._streams[rid]
            self._deliver(self.core.abort([c.request_id for c in stream.children if not c.finished]))

    def _deliver(self, changed: list[Request]) -> None:
        by_parent: dict[str, list[Request]] = {}
        for request in changed:
            by_parent.setdefault(request.parent_id, []).append(request)
        for parent_id, requests in by_parent.items():
            stream = self._streams.get(parent_id)
            if stream is None:
                continue
            out = merge_outputs(requests, stream.children, delta=True)
            stream.post(out)
            if out.finished:
                del self._streams[parent_id]


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
