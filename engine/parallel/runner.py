"""The driver's stand-in for `ModelRunner`: the same `execute(out, kv, vocab_size)`, run on every rank.

Flow of one step: the scheduler's output (per attention group with DP) -> `prepare_inputs` on the host ->
`StepMessage` (inputs, a host `SamplingBatch` without generators, seeds, released ids) -> `Executor.call
("execute")` on every rank -> the first rank of each attention group samples and answers {request id: (token,
logprobs)}; the others answer None. A rank that fails, dies or stops answering raises `RankFailedError` here,
within the collective timeout, and the engine loop fails its requests.
"""

import logging
from dataclasses import replace

import torch

from engine.config import EngineConfig, ParallelConfig
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager
from engine.model_runner import prepare_inputs
from engine.parallel.executor import Executor, make_executor
from engine.parallel.tp import RankLayout
from engine.parallel.worker import GroupStep, LoadReport, StepMessage, WorkerSpec, dummy_inputs
from engine.request import Request
from engine.sampler import SamplingBatch
from engine.scheduler import SchedulerOutput

log = logging.getLogger(__name__)


class DistributedRunner:
    def __init__(self, executor: Executor, layout: KVCacheLayout, num_blocks: int, reports: list[LoadReport]):
        self.executor, self.layout, self.num_blocks, self.reports = executor, layout, num_blocks, reports
        self._sampled: dict[str, Request] = {}  # requests a sampling rank holds state for

    @classmethod
    def start(cls, config: EngineConfig, parallel: ParallelConfig, layout: KVCacheLayout, device: torch.device,
              backend: str) -> "DistributedRunner":
        """Start the ranks of `config` (an EngineConfig), load their shards, size and allocate the KV cache."""
        specs = [WorkerSpec(str(config.model.model), RankLayout.of(parallel, r), config.model.dtype,
                            _rank_device(device, r, parallel.distributed_executor_backend), backend,
                            config.cache.block_size, config.cache.kv_cache_memory,
                            config.cache.gpu_memory_utilization,
                            parallel.collective_timeout_s, parallel.moe_dispatch)
                 for r in range(parallel.world_size)]
        executor = make_executor(parallel, specs)
        reports = executor.start()
        try:
            num_blocks = min(r.kv_budget // r.bytes_per_block for r in reports)
            if num_blocks < 2:
                per_block = max(r.bytes_per_block for r in reports)
                raise ValueError(f"the KV cache budget holds {num_blocks} blocks of {per_block} bytes per rank; "
                                 f"give kv_cache_memory at least {2 * per_block} bytes (per rank)")
            executor.call("init_cache", num_blocks)
        except BaseException:
            executor.shutdown()
            raise
        for r in reports:
            log.info("rank %d (pid %d on %s): %s bytes of weights", r.rank, r.pid, r.host, r.tensor_bytes)
        return cls(executor, layout, num_blocks, reports)

    def execute(self, out, kv: KVCacheManager, vocab_size: int) -> dict[str, tuple[int, dict | None]]:
        parts = out.parts if hasattr(out, "parts") else [(out, kv)]  # DataParallelOutput: one per group
        released = [rid for rid, r in self._sampled.items() if r.finished]
        for rid in released:
            del self._sampled[rid]
        msg = StepMessage([self._group_step(o, k, vocab_size) for o, k in parts], released)
        sampled = {}
        for answer in self.executor.call("execute", msg):
            sampled.update(answer or {})
        return sampled

    def _group_step(self, out: SchedulerOutput, kv: KVCacheManager, vocab_size: int) -> GroupStep:
        if not out.scheduled:
            return GroupStep(dummy_inputs(len(self.layout.windows)), None, [], [], [])
        inputs = prepare_inputs(out, kv, self.layout, "cpu")
        rows = inputs.sampled
        self._sampled.update((r.request_id, r) for r in rows)
        sampling = SamplingBatch.build([r.params for r in rows], [r.prompt_token_ids for r in rows],
                                       [r.output_token_ids for r in rows], [None] * len(rows),
                                       [r.stop_ids for r in rows], vocab_size, "cpu") if rows else None
        # the seed each request's generator starts from, as in Request (params.seed + sample index)
        seeds = [None if r.params.seed is None else r.params.seed + r.index for r in rows]
        return GroupStep(replace(inputs, sampled=[]), sampling, [r.request_id for r in rows], seeds,
                         [r.params.logprobs for r in rows])

    @property
    def healthy(self) -> bool:
        return self.executor.healthy

    def shutdown(self) -> None:
        self.executor.shutdown()


def _rank_device(device: torch.device, rank: int, backend: str) -> str:
    """The device a rank computes on, as that rank's process sees it (Ray shows each actor only its GPU)."""
    if device.type != "cuda":
        return "cpu"
    return "cuda:0" if backend == "ray" else f"cuda:{rank % torch.cuda.device_count()}"
