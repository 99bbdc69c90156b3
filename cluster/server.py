"""LLMServer: one replica's engine. A plain class (tests drive it in-process); `cluster.app` makes it a deployment.

Flow: `generate(GenerateRequest)` renders the prompt (harmony for chat and responses), fills the model-dependent
defaults and checks (context length, max_tokens), starts `AsyncLLM.generate`, and yields: first a head item
(`"ok"`, or an `ApiError` for bad input or a full engine queue), then what the endpoint's formatter makes of each
engine output (SSE frames when streaming, else one body; for the gRPC gateway, `output="deltas"`: a `StreamHead`,
then token/channel deltas, cluster/grpc/stream.py). Closing the generator early (client gone, deadline) aborts the
engine request, which frees its KV blocks; a request's own `deadline` aborts it in the engine when it passes (408).
Metrics are recorded as outputs stream and pushed to the hub every `metrics_push_interval_s`; the routers read the
replica's load (`record_routing_stats`: queue, KV usage) every `routing.stats_period_s`.
"""

import asyncio
import logging
import os
import time

from cluster.config import ModelSpec
from cluster.errors import ApiError, bad_request, from_value_error, overloaded, timed_out
from cluster.grpc.stream import DeltaFormatter, StreamHead
from cluster.metrics import ReplicaMetrics, RequestTimes
from cluster.openai_output import ChatFormatter, CompletionFormatter
from cluster.protocol import GenerateRequest
from cluster.responses_api import ResponsesFormatter
from engine.async_llm import QueueFullError
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)
HEAD_OK = "ok"
FORMATTERS = {"chat": ChatFormatter, "completion": CompletionFormatter, "response": ResponsesFormatter}


def _default_engine(**kwargs):
    from engine.async_llm import AsyncLLM  # noqa: PLC0415 - loads torch; only where an engine runs

    return AsyncLLM(**kwargs)


class LLMServer:
    def __init__(self, spec: ModelSpec | dict, hub=None, push_interval_s: float = 1.0, engine_factory=None,
                 replica: str | None = None):
        self.spec = spec if isinstance(spec, ModelSpec) else _spec_from_dict(spec)
        _limit_cpu_threads(self.spec)
        self.engine = (engine_factory or _default_engine)(**self.spec.engine_kwargs())
        self.tokenizer = self.engine.tokenizer
        self.replica = replica or _replica_tag()
        self.metrics = ReplicaMetrics(self.spec.name, self.replica, self.engine.stats)
        self._hub, self._push_interval_s = hub, push_interval_s
        self._pusher: asyncio.Task | None = None
        self._max_new = self.engine.max_tokens_per_sequence

    # ---- requests ----
    async def generate(self, req: GenerateRequest):
        """Head item ("ok" or ApiError), then SSE frames (streaming) or one response body."""
        self._ensure_pusher()
        times = RequestTimes(arrival=time.monotonic())
        deadline = _Deadline(self.engine, req)
        try:
            if deadline.expired:
                raise deadline.error()
            prompt_ids, params = self._prepare(req)
            stream = self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id=req.request_id)
            first = await anext(stream)
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
            yield StreamHead(self.replica, len(prompt_ids)) if req.output == "deltas" else HEAD_OK
            async for item in self._stream(req, stream, first, len(prompt_ids), times, deadline):
                yield item
        finally:
            deadline.cancel()

    async def _stream(self, req, stream, first, prompt_len: int, times: RequestTimes, deadline: "_Deadline"):
        deltas = req.output == "deltas"
        formatter = (DeltaFormatter if deltas else FORMATTERS[req.kind])(req, self.tokenizer, self.spec.name)
        out, last, finish = first, None, "abort"
        try:
            while True:
                now = time.monotonic()
                count = sum(len(s.token_ids) for s in out.outputs)
                self.metrics.on_tokens(count, None if last is None else now - last)
                last = now if count else last
                for frame in formatter.feed(out):
                    yield frame
                if out.finished:
                    finish = out.outputs[0].finish_reason or "stop"
                    _copy_times(times, out.metrics)
                    break
                out = await anext(stream)
            if deltas and deadline.fired:  # the engine aborted it at the deadline: say so, not "abort"
                yield deadline.error()
                return
            for item in formatter.finish():
                yield item
        finally:
            await stream.aclose()  # a request cut short is aborted here: its KV blocks go back to the pool
            self.metrics.on_finished(prompt_len, finish, times)

    async def tokenize(self, req: GenerateRequest) -> dict | ApiError:
        """The prompt ids `generate` would run for `req` (chat rendered with its defaults), or the 400 it would give."""
        try:
            ids = self._prompt_ids(req)
        except ApiError as err:
            return err
        return {"token_ids": ids, "max_model_len": self.engine.max_model_len}

    def _prepare(self, req: GenerateRequest) -> tuple[list[int], SamplingParams]:
        ids = self._prompt_ids(req)
        limit = self.engine.max_model_len
        field = req.renames.get("prompt", "prompt")
        if len(ids) >= limit:
            raise bad_request(f"{field} is {len(ids)} tokens, beyond the model's context of {limit} tokens "
                              "(one token at least must be left to generate)", field, "context_length_exceeded")
        sampling = dict(req.sampling)
        if "max_tokens" not in sampling:
            room = min(limit, self._max_new) - len(ids)
            sampling["max_tokens"] = max(1, min(room, self.spec.default_max_tokens or room))
        if req.kind != "completion" or req.parse_harmony:  # harmony: stop at the end of the turn or a tool call
            sampling["stop_token_ids"] = sorted(set(sampling.get("stop_token_ids") or ())
                                                | set(self.tokenizer.stop_token_ids))
            sampling["skip_special_tokens"] = False
        try:
            return ids, SamplingParams(**sampling)
        except ValueError as err:
            raise from_value_error(err, req.renames) from None

    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        try:
            if req.kind == "completion":
                return self.tokenizer.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
            effort = req.reasoning_effort or self.spec.default_reasoning_effort
            return self.tokenizer.render_chat(req.messages, reasoning_effort=effort, tools=req.tools)
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
        self._ensure_pusher()
        if not self.engine.healthy:
            raise RuntimeError(f"engine of model {self.spec.name!r} on replica {self.replica} is not running")

    def _ensure_pusher(self) -> None:
        if self._hub is not None and self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def _push_loop(self) -> None:
        while True:
            await self.push_metrics()
            await asyncio.sleep(self._push_interval_s)

    async def push_metrics(self, final: bool = False) -> None:
        try:
            await self._hub.push.remote(f"{self.spec.name}/{self.replica}", self.metrics.snapshot(), final)
        except Exception as err:  # noqa: BLE001 - metrics must never take a replica down
            log.warning("metrics push failed: %r", err)

    async def __del__(self):
        """Serve calls this after draining (up to graceful_shutdown_timeout_s): last metrics, then stop the engine."""
        if self._pusher is not None:
            self._pusher.cancel()
            await self.push_metrics(final=True)  # a planned stop: not a lost replica
        self.engine.shutdown()


class _Deadline:
    """Aborts the engine request when `req.deadline` (unix time) passes: one timer per request, nothing per token."""

    def __init__(self, engine, req: GenerateRequest):
        self.at, self.fired, self._timer = req.deadline, False, None
        if self.at is not None:
            delay = self.seconds = max(0.0, self.at - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire, engine, req.request_id)

    @property
    def expired(self) -> bool:
        return self.fired or (self.at is not None and time.time() >= self.at)

    def _fire(self, engine, request_id: str) -> None:
        self.fired = True
        asyncio.ensure_future(engine.abort(request_id))

    def error(self) -> ApiError:
        return timed_out(round(self.seconds, 3))

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _copy_times(times: RequestTimes, metrics: dict) -> None:
    times.arrival = metrics.get("arrival", times.arrival)
    times.scheduled, times.first_token = metrics.get("scheduled"), metrics.get("first_token")
    times.finished = metrics.get("finished")


def _spec_from_dict(data: dict) -> ModelSpec:
    from cluster.config import from_dict  # noqa: PLC0415

    return from_dict(ModelSpec, data, "model")


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
