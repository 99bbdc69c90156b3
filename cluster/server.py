"""LLMServer: one replica's engine. A plain class (tests drive it in-process); `cluster.app` makes it a deployment.

Flow: `generate(GenerateRequest)` is refused (429) while a new request would wait past `max_queue_wait_s` for its
first token (admission control, `Waiting`), else renders the prompt (harmony for chat and responses), fills the
model-dependent defaults and checks (context length, max_tokens), starts `AsyncLLM.generate`, and yields: first a
head item (a `StreamHead` once the first token is out, or an `ApiError` for bad input, a full engine queue or a
passed deadline), then what the request's formatter (cluster/output/) makes of each engine output: SSE frames, one
body, or deltas for the gRPC gateway (grouped into windows for the front door's output filters when it asks, and
closed by a tally of usage and tool calls: cluster/output/window.py). Closing the generator early (client gone)
aborts the engine request, which frees its KV blocks; the request's `deadline` (stamped by the front door) aborts
it in the engine when it passes, and the stream ends with an `ApiError` item (408). Metrics count from
`req.received` (the front door's arrival), so any queue on the way shows in TTFT and queue time; they are pushed to
the hub every `metrics_push_interval_s`. The routers read the replica's load (`record_routing_stats`: queue, KV
usage) every `routing.stats_period_s`.
"""

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time

from cluster.config import ModelSpec
from cluster.errors import ApiError, bad_request, from_value_error, overloaded, timed_out
from cluster.hub import MetricsPusher
from cluster.metrics import ReplicaMetrics, RequestTimes
from cluster.output import formatter_for
from cluster.output.deltas import StreamHead
from cluster.output.window import Watch
from cluster.protocol import GenerateRequest
from cluster.tools.harmony import render_prompt
from cluster.tools.loop import run_with_tools, uses_tools
from cluster.tools.toolset import ToolSet
from engine.async_llm import QueueFullError
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


def _default_engine(**kwargs):
    from engine.async_llm import AsyncLLM  # noqa: PLC0415 - loads torch; only where an engine runs

    return AsyncLLM(**kwargs)


class LLMServer:
    def __init__(self, spec: ModelSpec | dict, hub=None, push_interval_s: float = 1.0, engine_factory=None,
                 replica: str | None = None, tools=None):
        self.spec = spec if isinstance(spec, ModelSpec) else _spec_from_dict(spec)
        self.tools = ToolSet(_tools_config(tools))  # the built-in tools this replica runs for /v1/responses
        _limit_cpu_threads(self.spec)
        self.engine = (engine_factory or _default_engine)(**self.spec.engine_kwargs())
        self.tokenizer = self.engine.tokenizer
        self.replica = replica or _replica_tag()
        self.metrics = ReplicaMetrics(self.spec.name, self.replica, self.engine.stats)
        self.pusher = MetricsPusher(hub, f"{self.spec.name}/{self.replica}", self.metrics.snapshot, push_interval_s)
        self._max_new = self.engine.max_tokens_per_sequence
        self.waiting = Waiting()  # requests without a first token yet: admission control (spec.max_queue_wait_s)

    # ---- requests ----
    async def generate(self, req: GenerateRequest):
        """Head item (StreamHead or ApiError), then the formatter's items (an ApiError last if the deadline passed)."""
        self.pusher.start()
        upstream = 0.0 if req.received is None else max(0.0, time.time() - req.received)  # the router's queue
        refusal = self.waiting.refusal(self.spec.max_queue_wait_s, upstream)
        if refusal is not None:
            yield refusal
            return
        with self.waiting.entered() as entry:
            async with contextlib.aclosing(self._generate(req, entry)) as items:  # closed early: the engine aborts
                async for item in items:
                    yield item

    async def _generate(self, req: GenerateRequest, entry: "_Entry"):
        times = RequestTimes(arrival=_arrival(req))
        deadline = _Deadline(self.engine, req)
        if uses_tools(req):
            entry.leave()  # a response with tools runs several engine requests; only its admission is checked
            async for item in run_with_tools(self, req, times, deadline):
                yield item
            return
        try:
            if deadline.expired:
                raise deadline.error()
            prompt_ids, params = self._prepare(req)
            stream = self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id=req.request_id)
            first = await _first(stream)
            entry.leave()
            if deadline.fired:  # aborted at the deadline before its first token
                await stream.aclose()
                raise deadline.error()
        except ApiError as err:
            deadline.cancel()
            yield err
            return
        except QueueFullError as err:
            deadline.cancel()
            yield overloaded(429, str(err))
            return
        except ValueError as err:
            deadline.cancel()
            yield from_value_error(err, req.renames)
            return
        try:
            yield StreamHead(self.replica, len(prompt_ids))
            async for item in self._stream(req, stream, first, len(prompt_ids), times, deadline):
                yield item
        finally:
            deadline.cancel()

    async def _stream(self, req, stream, first, prompt_len: int, times: RequestTimes, deadline: "_Deadline"):
        formatter = formatter_for(req)(req, self.tokenizer, self.spec.name)
        watch = Watch(req, formatter)  # windows for the front door's output guard, the closing tally
        out, last, finish = first, None, "abort"
        try:
            while True:
                now = time.monotonic()
                count = sum(len(s.token_ids) for s in out.outputs)
                self.metrics.on_tokens(count, None if last is None else now - last)
                last = now if count else last
                for frame in watch.feed(out):
                    yield frame
                if out.finished:
                    finish = out.outputs[0].finish_reason or "stop"
                    _copy_times(times, out.metrics)
                    break
                out = await anext(stream)
            if deadline.fired:  # the engine aborted it at the deadline: say so, not "abort"
                for item in watch.flush() + ([watch.tally()] if req.tally else []):
                    yield item
                yield deadline.error()
                return
            for item in watch.finish(formatter.finish()) + ([watch.tally()] if req.tally else []):
                yield item
        finally:
            await stream.aclose()  # a request cut short is aborted here: its KV blocks go back to the pool
            self.metrics.on_finished(prompt_len, finish, times)

    async def tokenize(self, req: GenerateRequest) -> dict | ApiError:
        """The prompt ids `generate` would run for `req` (chat rendered with its defaults), or the 400 it would give."""
        try:
            ids = self._prompt_ids(req, self.tools.namespaces(req))
        except ApiError as err:
            return err
        return {"token_ids": ids, "max_model_len": self.engine.max_model_len}

    def _prepare(self, req: GenerateRequest) -> tuple[list[int], SamplingParams]:
        ids = self._prompt_ids(req)
        return ids, self.sampling_params(req, ids)

    def sampling_params(self, req: GenerateRequest, ids: list[int], generated: int = 0) -> SamplingParams:
        """The request's SamplingParams for a prompt of `ids` (`generated`: tokens earlier steps of the same response
        made, which its max_tokens includes); 400 when the prompt leaves no room."""
        limit = self.engine.max_model_len
        field = req.renames.get("prompt", "prompt")
        if len(ids) >= limit:
            raise bad_request(f"{field} is {len(ids)} tokens, beyond the model's context of {limit} tokens "
                              "(one token at least must be left to generate)", field, "context_length_exceeded")
        sampling = dict(req.sampling)
        if "max_tokens" not in sampling:
            room = min(limit, self._max_new) - len(ids)
            sampling["max_tokens"] = max(1, min(room, (self.spec.default_max_tokens or room) - generated))
        else:
            sampling["max_tokens"] -= generated
        if req.kind != "completion" or req.parse_harmony:  # harmony: stop at the end of the turn or a tool call
            sampling["stop_token_ids"] = self.tokenizer.turn_stop_ids(sampling.get("stop_token_ids"),
                                                                      bool(sampling.get("ignore_eos")))
            sampling["skip_special_tokens"] = False
        try:
            return SamplingParams(**sampling)
        except ValueError as err:
            raise from_value_error(err, req.renames) from None

    def _prompt_ids(self, req: GenerateRequest, namespaces: tuple = ((), ())) -> list[int]:
        """The prompt: a completion's text or ids, or the chat rendered with harmony (with the namespaces of the
        tools the server runs, cluster/tools/harmony.py)."""
        try:
            if req.kind == "completion":
                return self.tokenizer.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
            effort = req.reasoning_effort = req.reasoning_effort or self.spec.default_reasoning_effort
            return render_prompt(self.tokenizer, req.messages, effort, req.tools, *namespaces)
        except ValueError as err:
            renames = {"messages": "input"} if req.kind == "response" else {}
            raise from_value_error(err, renames) from None

    # ---- health, load, metrics, shutdown ----
    async def record_routing_stats(self) -> dict:
        """This replica's load as the routers see it (Serve polls it every routing.stats_period_s)."""
        s = self.engine.stats()
        return {"num_running": s.num_running, "num_waiting": s.num_waiting, "kv_cache_usage": s.kv_cache_usage,
                "num_free_blocks": s.num_free_blocks, "num_total_blocks": s.num_total_blocks,
                "prefix_cache_queries": s.prefix_cache_queries, "prefix_cache_hits": s.prefix_cache_hits,
                "replica": self.replica}

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising marks the replica unhealthy (it is replaced)."""
        self.pusher.start()
        if not self.engine.healthy:
            raise RuntimeError(f"engine of model {self.spec.name!r} on replica {self.replica} is not running")

    async def __del__(self):
        """Serve calls this after draining (up to graceful_shutdown_timeout_s): last metrics, then stop the engine."""
        await self.pusher.stop()  # a final push: a planned stop, not a lost replica
        await self.tools.close()
        self.engine.shutdown()


class _Entry:
    """One request in `Waiting` until its first token (or its end)."""

    def __init__(self, waiting: "Waiting", key: int):
        self.waiting, self.key = waiting, key

    def leave(self) -> None:
        """The request has its first token (or ended): it waits no more."""
        if self.waiting.since.pop(self.key, None) is not None:
            self.waiting.served.append(time.monotonic())


class Waiting:
    """The replica's requests that have no first token yet, with when each came in, and when recent ones got theirs:
    a new request would wait at least as long as the oldest has, and about as long as the queue ahead of it takes
    at the recent rate of first tokens. Admission control acts on the larger of the two."""

    RATE_WINDOW_S = 10.0  # first tokens counted over this many seconds for the rate

    def __init__(self):
        self.since: dict[int, float] = {}  # entry key -> time.monotonic() when the request reached the replica
        self.served: collections.deque[float] = collections.deque(maxlen=256)  # monotonic times of first tokens
        self._keys = itertools.count()

    @contextlib.contextmanager
    def entered(self):
        entry = _Entry(self, next(self._keys))
        self.since[entry.key] = time.monotonic()
        try:
            yield entry
        finally:
            entry.leave()

    def expected_wait_s(self) -> float:
        """max(the oldest waiting request's wait, requests waiting / first tokens per second lately)."""
        now = time.monotonic()
        oldest = now - min(self.since.values()) if self.since else 0.0
        recent = [t for t in self.served if t > now - self.RATE_WINDOW_S]
        if not self.since or not recent:
            return oldest
        span = max(now - recent[0], 1.0)
        return max(oldest, len(self.since) * span / len(recent))

    def refusal(self, limit_s: float | None, upstream_s: float = 0.0) -> ApiError | None:
        """429 (Retry-After) when a new request, which has already waited `upstream_s` since the front door took it
        (in the routers' queues, unseen here), would wait longer than `limit_s` in all for its first token; None to
        admit."""
        if limit_s is None:
            return None
        wait = upstream_s + self.expected_wait_s()
        if wait <= limit_s:
            return None
        return overloaded(429, f"a request on this replica would wait about {wait:.1f} s for its first token "
                               f"({upstream_s:.1f} s of it before reaching the replica), over max_queue_wait_s "
                               f"{limit_s:g} s")


class _Deadline:
    """Aborts the engine request when `req.deadline` (unix time) passes: one timer per request, nothing per token."""

    def __init__(self, engine, req: GenerateRequest):
        self.at, self.fired, self._timer = req.deadline, False, None
        self.request_id = req.request_id  # the engine request running now (a response with tools runs several)
        if self.at is not None:
            delay = max(0.0, self.at - time.time())
            self.seconds = self.at - req.received if req.received is not None else delay  # the request's timeout
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire, engine)

    @property
    def expired(self) -> bool:
        return self.fired or (self.at is not None and time.time() >= self.at)

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.time())

    def _fire(self, engine) -> None:
        self.fired = True
        asyncio.ensure_future(engine.abort(self.request_id))

    def error(self) -> ApiError:
        return timed_out(round(self.seconds, 3))

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def _first(stream):
    """The engine stream's first output; a caller gone before it (cancelled, closed) aborts the engine request now,
    not when the stream is collected."""
    try:
        return await anext(stream)
    except BaseException:
        await stream.aclose()
        raise


def _arrival(req: GenerateRequest) -> float:
    """The front door's arrival time on this process's monotonic clock (now, for a request that has none)."""
    now = time.monotonic()
    return now if req.received is None else now - max(0.0, time.time() - req.received)


def _copy_times(times: RequestTimes, metrics: dict) -> None:
    times.scheduled, times.first_token = metrics.get("scheduled"), metrics.get("first_token")
    times.finished = metrics.get("finished")


def _tools_config(tools):
    from cluster.tools.config import ToolsConfig  # noqa: PLC0415

    if tools is None or isinstance(tools, ToolsConfig):
        return tools or ToolsConfig()
    from cluster.config import validate  # noqa: PLC0415

    return validate(ToolsConfig, tools, "tools")


def _spec_from_dict(data: dict) -> ModelSpec:
    from cluster.config import validate  # noqa: PLC0415

    return validate(ModelSpec, data, "model")


def _limit_cpu_threads(spec: ModelSpec) -> None:
    """On CPU, torch uses the replica's reserved CPUs, not every core of the node (replicas share nodes)."""
    if spec.device == "cuda" or spec.num_gpus:
        return
    import torch  # noqa: PLC0415

    threads = max(1, int(spec.num_cpus))
    if int(os.environ.get("OMP_NUM_THREADS", "0") or 0) == 0:
        torch.set_num_threads(threads)


def _replica_tag() -> str:
    try:
        from ray import serve  # noqa: PLC0415

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a Serve replica (tests, local runs)
        return f"local-{os.getpid()}"
