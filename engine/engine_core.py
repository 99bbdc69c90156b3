"""The engine loop body: `step()` = `scheduler.schedule()` -> `executor.execute()` -> `scheduler.update()`.

`EngineCore` owns the scheduler (one per attention group) and the executor, and turns prompts into `Request`s
(tokenized, validated, one per sample for n > 1). `LLM` drives it synchronously; `AsyncLLM` runs it in a
background thread. The executor holds the workers: one in this process for one rank (engine.executor), one
process or Ray actor per rank otherwise (engine.parallel.executor, docs/parallelism.md); the step path is the same.

Async scheduling (SchedulerConfig.async_scheduling; by default on for CUDA, off on CPU): `step()` schedules and
launches step N+1, then waits for step N and processes its tokens (detokenization, stop strings) while N+1 runs on
the device; the scheduler counts step N's tokens as computed before they come back (engine.scheduler). With it off,
`step()` schedules, runs and processes one step at a time.
"""

import dataclasses
import itertools
import logging
from pathlib import Path

from engine.config import EngineConfig
from engine.executor import Executor, StepResult, make_executor
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager, blocks_for_sequence
from engine.memory import MemoryReport, activation_bytes, rss_bytes
from engine.model.config import load_config
from engine.parallel.dp_scheduler import DataParallelScheduler
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledStep, Scheduler, SchedulerStats
from engine.structured import grammar
from engine.text.detokenizer import IncrementalDetokenizer
from engine.text.tokenizer import Tokenizer
from engine.utils import generation_eos_ids, resolve_device, resolve_dtype
from engine.worker import LoadReport

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
    def __init__(self, config: EngineConfig, executor: Executor | None = None):
        """`executor`: already started for `config` (a stand-in device in benchmarks); made from it by default."""
        if config.model.model is None:
            raise ValueError("model must name a checkpoint directory")
        self.config, self.model_dir = config, Path(config.model.model)
        self.arch = load_config(self.model_dir)  # the checkpoint's architecture
        config.parallel.check_model(self.arch)
        self.tokenizer = Tokenizer.load(self.model_dir)
        self.eos_token_ids = generation_eos_ids(self.model_dir, self.arch.eos_token_ids)
        self.max_model_len = config.model.context_limit(self.arch.max_position_embeddings)
        self.layout = KVCacheLayout.for_model(self.arch, config.cache.block_size)
        self.executor = executor or make_executor(config)  # loads the weights on every rank
        try:
            num_blocks = kv_cache_blocks(self.executor.reports, config.parallel.world_size > 1)
            self.executor.init_cache(num_blocks)
        except BaseException:
            self.executor.shutdown()
            raise
        kvs = [KVCacheManager(self.layout, num_blocks, config.cache.enable_prefix_caching)
               for _ in range(config.parallel.data_parallel_size)]
        self.kv = kvs[0]  # every group's has `num_blocks`; this one answers capacity questions
        self.scheduler = DataParallelScheduler([Scheduler(config.scheduler, kv) for kv in kvs])
        self.async_scheduling = config.scheduler.async_on(resolve_device(config.model.device).type)
        self._in_flight: tuple[list[ScheduledStep], StepResult] | None = None  # async scheduling: the step running
        self._ids = itertools.count()
        log.info("KV cache: %d blocks of %d tokens; one sequence can hold up to %d tokens", num_blocks,
                 config.cache.block_size, self.max_tokens_per_sequence)
        self.memory = self._memory_report(num_blocks)
        log.info(self.memory.line())

    def _memory_report(self, num_blocks: int) -> MemoryReport:
        report, seq_tokens = self.executor.reports[0], self.max_tokens_per_sequence
        itemsize = resolve_dtype(self.config.model.dtype).itemsize
        return MemoryReport(report.tensor_bytes, num_blocks * report.bytes_per_block, seq_tokens,
                            activation_bytes(self.arch, self.config, seq_tokens, itemsize), *rss_bytes())

    def _blocks_for_sequence(self, num_tokens: int) -> int:
        return blocks_for_sequence(self.layout, num_tokens, self.config.scheduler.max_num_batched_tokens)

    @property
    def max_tokens_per_sequence(self) -> int:
        """Most tokens (prompt + output) one sequence's KV fits in the cache, at most max_model_len."""
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
        bad = [t for t in ids if not 0 <= t < self.arch.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids must be in [0, {self.arch.vocab_size}), got {bad[:5]}")
        return None, list(ids)

    def make_requests(self, prompt: PromptType, params: SamplingParams, request_id: str | None = None
                      ) -> list[Request]:
        """One validated request per sample (ids `RID` for n == 1, `RID#i` for n > 1)."""
        text, ids = self.prompt_ids(prompt)
        params.validate_for_model(self.arch.vocab_size, self.max_model_len, len(ids))
        params = self.with_reasoning_budget(params)
        if params.structured_outputs is not None:  # already compiled by AsyncLLM (off its loop): a cache hit
            grammar.compile_within(self.tokenizer, self.arch.vocab_size, params.structured_outputs.grammars,
                                   self.config.structured.grammar_compile_timeout_s)
        needed = self._blocks_for_sequence(len(ids) + params.max_tokens)
        if needed > self.kv.pool.num_blocks - 1:
            raise ValueError(f"prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) needs {needed} KV "
                             f"blocks but the cache holds {self.kv.pool.num_blocks - 1}; lower max_tokens or give "
                             "the engine more kv_cache_memory")
        rid = request_id if request_id is not None else str(next(self._ids))
        return [Request(rid if params.n == 1 else f"{rid}#{i}", ids, params, self.eos_token_ids, prompt=text,
                        detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens)
                        if params.detokenize else None,
                        index=i, parent_id=rid)
                for i in range(params.n)]

    def with_reasoning_budget(self, params: SamplingParams) -> SamplingParams:
        """A harmony-constrained request's analysis budget filled in from the config (so its answer always fits in
        max_tokens)."""
        spec = params.structured_outputs
        if spec is None or not spec.harmony or params.max_reasoning_tokens is not None:
            return params
        budget = self.config.structured.reasoning_budget(None, params.max_tokens)
        return dataclasses.replace(params, max_reasoning_tokens=budget)

    def add(self, requests: list[Request]) -> None:
        for r in requests:
            self.scheduler.add(r)

    def abort(self, request_ids: list[str]) -> list[Request]:
        return [r for rid in request_ids if (r := self.scheduler.abort(rid)) is not None]

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._in_flight is not None

    def step(self) -> list[Request]:
        """Run one step; return the requests that produced output (finished ones included). Under async
        scheduling that output is the previous step's, processed while this one runs."""
        steps = self.scheduler.schedule()
        if not any(s.scheduled for s in steps):
            steps = None
        if not self.async_scheduling:
            return self.scheduler.update(steps, self._launch(steps).result()) if steps else []
        launched = None
        if steps:
            self.scheduler.advance(steps)  # the next schedule() plans past this step before it has run
            launched = steps, self._launch(steps)
        previous, self._in_flight = self._in_flight, launched
        if previous is None:
            return []
        return self.scheduler.update(previous[0], previous[1].result())

    def _launch(self, steps: list[ScheduledStep]) -> StepResult:
        return self.executor.execute([s.output for s in steps])

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    @property
    def healthy(self) -> bool:
        """False once a rank has failed (or the executor was shut down)."""
        return self.executor.healthy

    def shutdown(self) -> None:
        """Stop the workers (the rank processes of a multi-rank engine, the device thread of one)."""
        self.executor.shutdown()


def kv_cache_blocks(reports: list[LoadReport], per_rank: bool) -> int:
    """KV blocks every rank can hold: the smallest count any rank's budget affords (at least 2, one is the null
    block)."""
    num_blocks = min(r.kv_budget // r.bytes_per_block for r in reports)
    if num_blocks < 2:
        worst = min(reports, key=lambda r: r.kv_budget // r.bytes_per_block)
        raise ValueError(f"kv_cache_memory of {worst.kv_budget} bytes holds {num_blocks} blocks of "
                         f"{worst.bytes_per_block} bytes{' per rank' if per_rank else ''}; give it at least "
                         f"{2 * worst.bytes_per_block} bytes{' (per rank)' if per_rank else ''}")
    return num_blocks
