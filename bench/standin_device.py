"""A stand-in device for measuring the engine's exposed host overhead: the real engine (scheduler, worker,
in-process executor, sampler, detokenizer) over a model whose forward takes a fixed time.

The stand-in forward sleeps (the GIL is free, as it is while a GPU computes) and returns zeros; its logits are a
fixed random [S, V] table; sampling is greedy (on this CPU a top-p sort over [256, V] alone would take tens of ms of
"device" time). Everything else is the engine's own code path. The device thread logs when it is busy: the forward,
and the sampler's tensor math (device work on a GPU). Per step, wall time = from one forward's start to the next's,
and the host overhead the step exposes = its wall time - its busy time (the device sitting idle). Medians over the
steps, so a shared machine's scheduling hiccups do not drown the number; the means are reported too.
"""

import random
import statistics
import time
from dataclasses import dataclass

import torch

from engine.config import EngineConfig
from engine.engine_core import EngineCore
from engine.executor import InProcExecutor
from engine.parallel.tp import RankLayout
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.structured.params import Grammar, StructuredOutputs
from engine.weights.tiny_model import TinyModelSpec
from engine.worker import Worker

SPEC = TinyModelSpec(seed=0, vocab=4096)  # a small vocabulary keeps the logits small on CPU


class BusyLog:
    """(start, end) perf_counter intervals of device work."""

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []

    def timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.intervals.append((start, time.perf_counter()))

    def busy_between(self, t0: float, t1: float) -> float:
        return sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in self.intervals)


def per_step(forward: BusyLog, busy: BusyLog, t0: float, t1: float) -> tuple[list[float], list[float]]:
    """(wall, busy) seconds of each step in [t0, t1]: from one forward's start to the next's."""
    starts = [a for a, _ in forward.intervals if t0 <= a <= t1]
    periods = list(zip(starts, starts[1:]))
    return [b - a for a, b in periods], [busy.busy_between(a, b) for a, b in periods]


class StandInModel:
    """What ModelRunner and Worker call on a model: forward (sleeps `seconds`), unembed (fixed logits), config."""

    def __init__(self, config, seconds: float, log: BusyLog):
        self.config, self.seconds, self.log, self.forwards = config, seconds, log, BusyLog()
        gen = torch.Generator().manual_seed(0)
        self.logits = torch.randn(1024, config.vocab_size, generator=gen)  # rows reused for every step

    def __call__(self, input_ids, positions, cache) -> torch.Tensor:
        self.forwards.timed(self.log.timed, time.sleep, self.seconds)
        return torch.zeros(input_ids.shape[0], self.config.hidden_size)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits[: hidden.shape[0]].clone()  # a new tensor, as a real unembedding makes (the sampler edits
        #                                                  it in place when no row asks for logprobs)


class TimedSampler(Sampler):
    def __init__(self, log: BusyLog):
        self.log = log

    def __call__(self, logits, batch):
        return self.log.timed(super().__call__, logits, batch)


class StandInWorker(Worker):
    """The engine's Worker with the stand-in model in place of the loaded one."""

    def __init__(self, config: EngineConfig, seconds: float):
        super().__init__(config, RankLayout.of(config.parallel, 0), "cpu")
        self.log, self.seconds = BusyLog(), seconds
        self.sampler = TimedSampler(self.log)

    def load(self, init_method=None):
        report = super().load(init_method)
        self.model = StandInModel(self.model.config, self.seconds, self.log)
        return report


@dataclass
class Exposed:
    running: int
    async_scheduling: bool
    step_ms: float  # median wall time per step in steady decode
    device_ms: float  # median device busy time per step (forward + sampler math)
    exposed_ms: float  # median of step wall time - device busy time: the host work the device waited for
    mean_step_ms: float  # the means of the same
    mean_exposed_ms: float


# a JSON-like language that never has to end, so every request stays constrained through the measured steps
ENDLESS_RECORDS = r'\[(\{"id":[0-9]{1,4},"name":"[a-z ]{1,12}","ok":(true|false)\},)+'


def exposed_overhead(model_dir, running: int, async_scheduling: bool, seconds: float = 0.020,
                     steps: int = 60, constrained: bool = False) -> Exposed:
    """Steady decode with `running` requests (prompts of 24 tokens, greedy, detokenized); `constrained`: each held
    to a grammar (ENDLESS_RECORDS), so every step fills and applies a bitmask row per request."""
    config = EngineConfig.from_kwargs(model=str(model_dir), dtype="float32", device="cpu", max_num_seqs=running,
                                      max_num_batched_tokens=max(2048, running), async_scheduling=async_scheduling)
    worker = StandInWorker(config, seconds)
    core = EngineCore(config, executor=InProcExecutor(worker))
    try:
        rng = random.Random(0)
        spec = (StructuredOutputs(final=Grammar("regex", ENDLESS_RECORDS), harmony=False) if constrained
                else None)
        params = SamplingParams(temperature=0, max_tokens=steps + 40, ignore_eos=True, structured_outputs=spec)
        for i in range(running):
            prompt = {"prompt_token_ids": [rng.randrange(1, SPEC.vocab) for _ in range(24)]}
            core.add(core.make_requests(prompt, params, request_id=f"d{i}"))
        while any(len(r.output_token_ids) < 2 for r in core.scheduler.requests.values()):
            core.step()  # prefill everything, and reach steady decode
        t0 = time.perf_counter()
        for _ in range(steps):
            core.step()
        t1 = time.perf_counter()
        assert len(core.scheduler.requests) == running
        if constrained:  # every row stayed under its grammar
            assert all(s.constraint.active for s in worker.sampling.values())
        wall, busy = per_step(worker.model.forwards, worker.log, t0, t1)
        exposed = [w - b for w, b in zip(wall, busy)]
        return Exposed(running, async_scheduling, statistics.median(wall) * 1e3, statistics.median(busy) * 1e3,
                       statistics.median(exposed) * 1e3, statistics.mean(wall) * 1e3,
                       statistics.mean(exposed) * 1e3)
    finally:
        core.shutdown()
