"""The engine loop body: `step()` = `scheduler.schedule()` -> `runner.execute()` -> `scheduler.update()`.

`EngineCore` owns the model, the KV cache and the scheduler, and turns prompts into `Request`s (tokenized,
validated, one per sample for n > 1). `LLM` drives it synchronously; `AsyncLLM` runs it in a background thread.
With more than one rank (tensor_parallel_size x data_parallel_size > 1) this process holds no weights: the runner
is engine.parallel's DistributedRunner, which sends each step to the rank processes (docs/parallelism.md).
"""

import itertools
import logging
from pathlib import Path

import torch

from engine import kernels
from engine.config import EngineConfig
from engine.cuda_graphs import DEFAULT_BATCH_SIZES as DEFAULT_GRAPH_BATCH_SIZES
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager, blocks_for_sequence
from engine.model.config import load_config
from engine.model.kernel_model import build_kernel_model
from engine.model.reference import Transformer
from engine.model_runner import ModelRunner
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerStats
from engine.text.detokenizer import IncrementalDetokenizer
from engine.text.tokenizer import Tokenizer
from engine.utils import generation_eos_ids, resolve_device, resolve_dtype
from engine.weights.checkpoint import load_weights

log = logging.getLogger(__name__)
PromptType = str | dict | list[int]


def engine_config(model: str | Path | None = None, config: EngineConfig | None = None, **engine_args
                  ) -> EngineConfig:
    """The argument check `LLM` and `AsyncLLM` share: a checkpoint directory with flat engine arguments (the field
    names of engine.config), or one whole `EngineConfig`."""
    if config is None:
        return EngineConfig.from_kwargs(model=model, **engine_args)
    if model is not None or engine_args:
        raise TypeError("pass either config=EngineConfig(...) or model and engine arguments, not both")
    return config


class EngineCore:
    def __init__(self, config: EngineConfig):
        self.config = config
        if config.model.model is None:
            raise ValueError("model must name a checkpoint directory")
        self.dtype, self.device = resolve_dtype(config.model.dtype), resolve_device(config.model.device)
        self.model_dir = Path(config.model.model)
        self.backend = config.model.backend if config.model.backend != "auto" else (
            "kernels" if kernels.use_triton(self.device) else "reference")
        self.parallel = config.parallel
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
        self.max_model_len = min(config.model.max_model_len or 1 << 62, self.model_config.max_position_embeddings)
        self.layout = KVCacheLayout.for_model(self.model_config, config.cache.block_size)
        if self.parallel.world_size == 1:
            num_blocks = self._num_blocks()
            self.runner = ModelRunner(self.model, self.layout, num_blocks, self.dtype, self.device)
            if self.device.type == "cuda" and self.backend == "kernels" and not config.model.enforce_eager:
                # (the reference model syncs the host in its MoE loop, so it cannot be captured)
                self.runner.capture_decode_graphs(self.max_blocks_per_sequence, self.graph_batch_sizes())
        else:
            from engine.parallel.runner import DistributedRunner  # noqa: PLC0415 - only multi-rank engines

            self.runner = DistributedRunner.start(config, self.parallel, self.layout, self.device, self.backend)
            num_blocks = self.runner.num_blocks
        self._build_scheduler(num_blocks)
        self._ids = itertools.count()
        log.info("KV cache: %d blocks of %d tokens; one sequence can hold up to %d tokens", num_blocks,
                 config.cache.block_size, self.max_tokens_per_sequence)

    def _build_scheduler(self, num_blocks: int) -> None:
        """One scheduler and KV cache manager, or one per attention group with data parallelism (every group has
        `num_blocks`; `self.kv` is the first group's, for capacity checks)."""
        kvs = [KVCacheManager(self.layout, num_blocks, self.config.cache.enable_prefix_caching)
               for _ in range(self.parallel.data_parallel_size)]
        schedulers = [Scheduler(self.config.scheduler, kv) for kv in kvs]
        self.kv = kvs[0]
        if len(schedulers) == 1:
            self.scheduler = schedulers[0]
        else:
            from engine.parallel.dp_scheduler import DataParallelScheduler  # noqa: PLC0415

            self.scheduler = DataParallelScheduler(schedulers)

    @property
    def max_blocks_per_sequence(self) -> int:
        """The widest block table a step can have (a full-attention group at the context limit)."""
        return -(-(self.max_model_len + 1) // self.config.cache.block_size)

    def graph_batch_sizes(self) -> tuple[int, ...]:
        sizes = self.config.model.cuda_graph_batch_sizes or DEFAULT_GRAPH_BATCH_SIZES
        return tuple(sorted({min(b, self.config.scheduler.max_num_seqs) for b in sizes}))

    def _num_blocks(self) -> int:
        per_block = ModelRunner.bytes_per_block(self.model_config, self.layout, self.config.cache.block_size, self.dtype)
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0
        budget = self.config.cache.kv_budget(self.device.type, free)
        num_blocks = budget // per_block
        if num_blocks < 2:
            raise ValueError(f"kv_cache_memory of {budget} bytes holds {num_blocks} blocks of {per_block} bytes; "
                             f"give it at least {2 * per_block} bytes")
        return num_blocks

    def _blocks_for_sequence(self, num_tokens: int) -> int:
        return blocks_for_sequence(self.layout, num_tokens, self.config.scheduler.max_num_batched_tokens)

    @property
    def max_tokens_per_sequence(self) -> int:
        usable, bs, n = self.kv.pool.num_blocks - 1, self.config.cache.block_size, 0
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
