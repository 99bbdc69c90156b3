"""Executors: how the engine reaches its workers. One protocol, two kinds:

- `InProcExecutor`: one rank, the `Worker` in this process. `execute` prepares the step's host tensors on the
  caller's thread and runs the device half on the executor's own device thread, so the engine can plan and prepare
  the next step (and process the previous one's outputs) while this one runs.
- `engine.parallel.executor.RankExecutor` (mp processes or Ray actors): one worker per rank, each step sent to all.

Every executor starts its workers (loading the weights) when made; the engine sizes the KV cache from their
`reports` and calls `init_cache`, then `execute` per step. `execute` returns at once with a future for the sampled
tokens; a failed rank makes it raise and `healthy` false.
"""

import queue
import threading
from concurrent.futures import Future
from typing import Protocol

import torch

from engine.config import EngineConfig
from engine.parallel.tp import RankLayout
from engine.scheduler_output import SchedulerOutput
from engine.utils import resolve_device
from engine.worker import LoadReport, SampledTokens, Worker


class StepResult(Protocol):
    def result(self) -> SampledTokens:
        """The step's sampled tokens, once it has run (raises if it failed)."""


class Executor(Protocol):
    reports: list[LoadReport]  # one per rank, from loading: weights held, KV budget, bytes per block

    def init_cache(self, num_blocks: int) -> None:
        """Allocate every rank's KV cache (the same block count on each)."""

    def execute(self, outputs: list[SchedulerOutput]) -> StepResult:
        """Start one step (one SchedulerOutput per attention group); returns before it has run."""

    @property
    def healthy(self) -> bool:
        """False once a rank has failed or the executor was shut down."""

    def shutdown(self) -> None:
        """Stop every rank (idempotent)."""


class InProcExecutor:
    """The one-rank engine: a Worker in this process. `execute` prepares the step's host tensors on the caller's
    thread; a device thread runs the steps in order (begin, forward, finish). It starts the next step (its inputs
    on the device, PENDING ids filled from this step's tokens) before it hands this step's tokens back: the caller
    wakes on those and runs Python for a while, and the next forward must not wait for the GIL behind it."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.reports = [worker.load()]
        self._steps: queue.SimpleQueue = queue.SimpleQueue()  # (PreparedStep, Future), None to stop
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._device_loop, name="gptoss-device", daemon=True)
        self._thread.start()

    def init_cache(self, num_blocks: int) -> None:
        self.worker.init_cache(num_blocks)

    def execute(self, outputs: list[SchedulerOutput]) -> "LocalStep":
        if self._closed:
            raise RuntimeError("the executor has been shut down")
        step = LocalStep()
        self._steps.put((self.worker.prepare(outputs), step.future))
        return step

    def _device_loop(self) -> None:
        _bind(self.worker)
        item = self._steps.get()
        begun = _attempt(self.worker.begin, item[0]) if item else None
        while item is not None:
            result = begun  # this step: forward and sample (unless its begin failed)
            if not isinstance(begun, _Failed):
                result = _attempt(lambda inputs: self.worker.finish(inputs, self.worker.forward(inputs)), begun)
            following = self._next_step()  # already queued (async scheduling): begin it before publishing
            after = _attempt(self.worker.begin, following[0]) if following else None
            self._publish(item[1], result)
            if following is None and not self._closed:  # none queued: wait for it
                following = self._steps.get()
                after = _attempt(self.worker.begin, following[0]) if following else None
            item, begun = following, after

    def _next_step(self):
        try:
            return self._steps.get_nowait()
        except queue.Empty:
            return None

    def _publish(self, future: Future, result) -> None:
        if isinstance(result, _Failed):
            self._error = result.error
            future.set_exception(result.error)
        else:
            future.set_result(result)

    @property
    def healthy(self) -> bool:
        return self._error is None and not self._closed

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._steps.put(None)
            self._thread.join()


class LocalStep:
    """A step on the device thread; `result()` reads its tokens on the caller's thread (SampledRows.entries)."""

    def __init__(self):
        self.future = Future()  # the worker's SampledRows

    def result(self) -> SampledTokens:
        return self.future.result().entries()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _attempt(fn, arg):
    """fn(arg), or the exception it raised wrapped in _Failed (handed to the step's caller)."""
    try:
        return fn(arg)
    except Exception as e:  # noqa: BLE001 - the step's future carries it to the engine loop
        return _Failed(e)


def _bind(worker: Worker) -> None:
    """The device thread computes on the worker's CUDA device."""
    if worker.device.type == "cuda" and worker.device.index is not None:
        torch.cuda.set_device(worker.device)


def make_executor(config: EngineConfig) -> Executor:
    """The executor for `config`'s ranks, started: in this process for one rank, else one process (or Ray actor)
    per rank."""
    device = resolve_device(config.model.device)
    if config.parallel.world_size == 1:
        return InProcExecutor(Worker(config, RankLayout.of(config.parallel, 0), str(device)))
    from engine.parallel.executor import RankExecutor  # noqa: PLC0415 - only multi-rank engines

    return RankExecutor.start(config, device)
