"""Executors: how the engine reaches its workers. One protocol, two kinds:

- `InProcExecutor`: one rank, the `Worker` in this process. `execute` prepares the step's host tensors on the
  caller's thread and runs the device half on the executor's own device thread, so the engine can plan and prepare
  the next step (and process the previous one's outputs) while this one runs.
- `engine.parallel.executor.RankExecutor` (mp processes or Ray actors): one worker per rank, each step sent to all.

Every executor starts its workers (loading the weights) when made; the engine sizes the KV cache from their
`reports` and calls `init_cache`, then `execute` per step. `execute` returns at once with a future for the sampled
tokens; a failed rank makes it raise and `healthy` false.
"""

from concurrent.futures import Future, ThreadPoolExecutor
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
    """The one-rank engine: a Worker in this process, its device half on one thread (steps run in order)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.reports = [worker.load()]
        self._device = ThreadPoolExecutor(1, thread_name_prefix="gptoss-device", initializer=_bind, initargs=(worker,))
        self._error: BaseException | None = None
        self._closed = False

    def init_cache(self, num_blocks: int) -> None:
        self.worker.init_cache(num_blocks)

    def execute(self, outputs: list[SchedulerOutput]) -> Future:
        future = self._device.submit(self.worker.run, self.worker.prepare(outputs))
        future.add_done_callback(self._check)
        return future

    def _check(self, future: Future) -> None:
        if future.exception() is not None:
            self._error = future.exception()

    @property
    def healthy(self) -> bool:
        return self._error is None and not self._closed

    def shutdown(self) -> None:
        self._closed = True
        self._device.shutdown(wait=True)


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
