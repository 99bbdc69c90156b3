"""The engine loop body: `step()` = `scheduler.schedule()` -> `runner.execute()` -> `scheduler.update()`.

`EngineCore` owns the model, the KV cache and the scheduler, and turns prompts into `Request`s (tokenized,
validated, one per sample for n > 1). `LLM` drives it synchronously; `AsyncLLM` runs it in a background thread.
With more than one rank (tensor_parallel_size x data_parallel_size > 1) this process holds no weights: the runner
is engine.parallel's DistributedRunner, which sends each step to the rank processes (docs/parallelism.md).
"""

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import kernels
from engine.cuda_graphs import DEFAULT_BATCH_SIZES as DEFAULT_GRAPH_BATCH_SIZES
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager
from engine.model.config import load_config
from engine.model.kernel_model import build_kernel_model
from engine.model.reference import Transformer
from engine.model_runner import ModelRunner
from engine.parallel.config import ParallelConfig
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig, SchedulerStats
from engine.text.detokenizer import IncrementalDetokenizer
from engine.text.tokenizer import Tokenizer
from engine.utils import generation_eos_ids, resolve_device, resolve_dtype
from engine.weights.checkpoint import load_weights

log = logging.getLogger(__name__)
PromptType = str | dict | list[int]
CPU_KV_CACHE_BYTES = 256 << 20  # default KV budget on CPU


@dataclass
class EngineConfig:
    model: str | Path  # checkpoint directory
    dtype: str = "bfloat16"  # "float32" or "bfloat16"
    device: str | None = None  # "cpu", "cuda", or None for cuda when available
    block_size: int = 16  # tokens per KV block
    kv_cache_memory: int | None = None  # bytes for the KV cache; None: gpu_memory_utilization on CUDA, 256 MiB on CPU
    gpu_memory_utilization: float = 0.9  # fraction of the free GPU memory (after loading) given to the KV cache
    max_num_seqs: int = 256  # requests running at once
    max_num_batched_tokens: int = 2048  # tokens per step
    max_waiting_requests: int | None = None  # waiting-queue limit (None: unbounded)
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # "fcfs" or "priority"
    max_model_len: int | None = None  # context limit; None: the model's max_position_embeddings
    backend: str = "auto"  # "reference" (dense experts, torch), "kernels" (packed MXFP4 experts, Triton on CUDA),
    #                        or "auto": kernels on CUDA or with GPTOSS_FORCE_TRITON=1, reference otherwise
    # parallelism (engine.parallel): TP x DP ranks, one process each; kv_cache_memory is then per rank
    tensor_parallel_size: int = 1  # ranks splitting attention heads, the vocabulary and (without EP) each expert
    data_parallel_size: int = 1  # attention groups with their own requests and KV cache; the MoE spans them all
    enable_expert_parallel: bool = False  # partition the experts over all ranks (EP = TP x DP) instead of slicing
    distributed_executor_backend: str = "mp"  # "mp" (local processes) or "ray" (actors in a placement group)
    collective_timeout_s: float = 60.0  # a rank silent this long fails the engine and its in-flight requests
    moe_dispatch: str = "allreduce"  # MoE collectives: "allreduce" (every rank sees every token) or "alltoall"
    #                                  (tokens sent only to their experts' ranks; needs enable_expert_parallel)
    placement_strategy: str = "PACK"  # Ray placement group of the ranks: PACK (one node if it fits) or SPREAD
    # CUDA graphs (engine/cuda_graphs.py): decode steps of up to the largest size replay a captured forward
    enforce_eager: bool = False  # never capture (always so on CPU, with the reference backend and with several ranks)
    cuda_graph_batch_sizes: tuple[int, ...] | None = None  # None: engine.cuda_graphs' sizes up to max_num_seqs

    def __post_init__(self):
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be a positive number of bytes, got {self.kv_cache_memory}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.backend not in ("auto", "reference", "kernels"):
            raise ValueError(f"backend must be 'auto', 'reference' or 'kernels', got {self.backend!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        sizes = self.cuda_graph_batch_sizes
        if sizes is not None and (not sizes or any(not isinstance(b, int) or b < 1 for b in sizes)):
            raise ValueError(f"cuda_graph_batch_sizes must be positive integers, got {self.cuda_graph_batch_sizes!r}")
        self.scheduler_config()  # validates its fields
        self.parallel_config()

    def parallel_config(self) -> ParallelConfig:
        return ParallelConfig(self.tensor_parallel_size, self.data_parallel_size, self.enable_expert_parallel,
                              self.distributed_executor_backend, self.collective_timeout_s,
                              placement_strategy=self.placement_strategy, moe_dispatch=self.moe_dispatch)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(self.max_num_seqs, self.max_num_batched_tokens, self.max_waiting_requests,
                               self.scheduling_policy)


class EngineCore:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.dtype, self.device = resolve_dtype(config.dtype), resolve_device(config.device)
        self.model_dir = Path(config.model)
        self.backend = config.backend if config.backend != "auto" else (
            "kernels" if kernels.use_triton(self.device) else "reference")
        self.parallel = config.parallel_config()
        if self.parallel.world_size == 1:
            packed = self.backend == "kernels"
            self.model_config, weights = load_weights(self.model_dir, self.dtype, self.device,
                                                      dequantize_experts=not packed)
            self.model = (build_kernel_model if packed else Transformer.from_weights)(self.model_config, weights)
        else:  # the ranks load their shards; this process only schedules
            self.model_config, self.model = load_config(self.model_dir), None
            self.parallel.check_model(self.model_config)
        self.tokenizer = Tokenizer.load(self.model_dir)
        self.eos_token_ids = generation_eos_ids(self.model_dir, self.model_config.eos_token_ids)
        self.max_model_len = min(config.max_model_len or 1 << 62, self.model_config.max_position_embeddings)
        self.layout = KVCacheLayout.for_model(self.model_config, config.block_size)
        if self.parallel.world_size == 1:
            num_blocks = self._num_blocks()
            self.runner = ModelRunner(self.model, self.layout, num_blocks, self.dtype, self.device)
            if self.device.type == "cuda" and self.backend == "kernels" and not config.enforce_eager:
                # (the reference model syncs the host in its MoE loop, so it cannot be captured)
                self.runner.capture_decode_graphs(self.max_blocks_per_sequence, self.graph_batch_sizes())
        else:
            from engine.parallel.runner import DistributedRunner  # noqa: PLC0415 - only multi-rank engines

            self.runner = DistributedRunner.start(config, self.parallel, self.layout, self.device, self.backend)
            num_blocks = self.runner.num_blocks
        self._build_scheduler(num_blocks)
        self._ids = itertools.count()
        log.info("KV cache: %d blocks of %d tokens; one sequence can hold up to %d tokens", num_blocks,
                 config.block_size, self.max_tokens_per_sequence)

    def _build_scheduler(self, num_blocks: int) -> None:
        """One scheduler and KV cache manager, or one per attention group with data parallelism (every group has
        `num_blocks`; `self.kv` is the first group's, for capacity checks)."""
        kvs = [KVCacheManager(self.layout, num_blocks, self.config.enable_prefix_caching)
               for _ in range(self.parallel.data_parallel_size)]
        schedulers = [Scheduler(self.config.scheduler_config(), kv) for kv in kvs]
        self.kv = kvs[0]
        if len(schedulers) == 1:
            self.scheduler = schedulers[0]
        else:
            from engine.parallel.dp_scheduler import DataParallelScheduler  # noqa: PLC0415

            self.scheduler = DataParallelScheduler(schedulers)

    @property
    def max_blocks_per_sequence(self) -> int:
        """The widest block table a step can have (a full-attention group at the context limit)."""
        return -(-(self.max_model_len + 1) // self.config.block_size)

    def graph_batch_sizes(self) -> tuple[int, ...]:
        sizes = self.config.cuda_graph_batch_sizes or DEFAULT_GRAPH_BATCH_SIZES
        return tuple(sorted({min(b, self.config.max_num_seqs) for b in sizes}))

    def _num_blocks(self) -> int:
        per_block = ModelRunner.bytes_per_block(self.model_config, self.layout, self.config.block_size, self.dtype)
        budget = self.config.kv_cache_memory
        if budget is None:
            if self.device.type == "cuda":
                budget = int(torch.cuda.mem_get_info(self.device)[0] * self.config.gpu_memory_utilization)
            else:
                budget = CPU_KV_CACHE_BYTES
        num_blocks = budget // per_block
        if num_blocks < 2:
            raise ValueError(f"kv_cache_memory of {budget} bytes holds {num_blocks} blocks of {per_block} bytes; "
                             f"give it at least {2 * per_block} bytes")
        return num_blocks

    def _blocks_for_sequence(self, num_tokens: int) -> int:
        """Most blocks one sequence of `num_tokens` holds at once. A full group holds all of its blocks; a sliding
        group holds the window before a chunk plus the chunk itself (a prefill chunk is written before any of it
        can be released), chunks being at most `max_num_batched_tokens` long."""
        bs = self.config.block_size
        chunk = min(num_tokens, self.config.max_num_batched_tokens)
        every = -(-num_tokens // bs)
        return sum(every if w is None else min(every, -(-(w - 1 + chunk) // bs) + 1) for w in self.layout.windows)

    @property
    def max_tokens_per_sequence(self) -> int:
        usable, bs, n = self.kv.pool.num_blocks - 1, self.config.block_size, 0
        step = max(1, usable * bs // 64)
        while self._blocks_for_sequence(n + step) <= usable and n < self.max_model_len:
            n += step
        return min(n, self.max_model_len)

    # ---- requests ----
    def prompt_ids(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of a prompt given as text, {"prompt_token_ids": [...]} or a list of ids."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            return prompt, self.tokenizer.encode(prompt)
        ids = prompt.get("prompt_token_ids") if isinstance(prompt, dict) else prompt
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in ids):
            raise ValueError("prompt must be text, a non-empty list of token ids, or {'prompt_token_ids': [...]}")
        bad = [t for t in ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids must be in [0, {self.model_config.vocab_size}), got {bad[:5]}")
        return None, list(ids)

    def make_requests(self, prompt: PromptType, params: SamplingParams, request_id: str | None = None
                      ) -> list[Request]:
        """One validated request per sample (ids `RID` for n == 1, `RID#i` for n > 1)."""
        text, ids = self.prompt_ids(prompt)
        params.validate_for_model(self.model_config.vocab_size, self.max_model_len, len(ids))
        needed = self._blocks_for_sequence(len(ids) + params.max_tokens)
        if needed > self.kv.pool.num_blocks - 1:
            raise ValueError(f"prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) needs {needed} KV "
                             f"blocks but the cache holds {self.kv.pool.num_blocks - 1}; lower max_tokens or give "
                             "the engine more kv_cache_memory")
        rid = request_id if request_id is not None else str(next(self._ids))
        return [Request(rid if params.n == 1 else f"{rid}#{i}", ids, params, self.eos_token_ids, prompt=text,
                        detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens),
                        device=self.device if self.model is not None else "cpu", index=i, parent_id=rid)
                for i in range(params.n)]

    def add(self, requests: list[Request]) -> None:
        for r in requests:
            self.scheduler.add(r)

    def abort(self, request_ids: list[str]) -> list[Request]:
        return [r for rid in request_ids if (r := self.scheduler.abort(rid)) is not None]

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> list[Request]:
        """Run one batch; return the requests that produced output (finished ones included)."""
        out = self.scheduler.schedule()
        if not out.scheduled:
            return []
        sampled = self.runner.execute(out, self.kv, self.model_config.vocab_size)
        return self.scheduler.update(out, sampled)

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    @property
    def healthy(self) -> bool:
        """False once a rank has failed (multi-rank engines); a single process is healthy while it runs."""
        return getattr(self.runner, "healthy", True)

    def shutdown(self) -> None:
        """Stop the rank processes of a multi-rank engine (nothing to do for a single process)."""
        if hasattr(self.runner, "shutdown"):
            self.runner.shutdown()
