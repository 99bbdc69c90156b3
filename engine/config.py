"""The engine's settings: one tree, each setting and its default declared once.

    EngineConfig
      model: ModelConfig          which checkpoint and how it runs: dtype, device, context limit, backend, CUDA graphs
      cache: CacheConfig          the paged KV cache: block size, memory budget, prefix caching
      scheduler: SchedulerConfig  continuous batching: seats, token budget, waiting queue, policy, async scheduling
      parallel: ParallelConfig    ranks (TP x DP, EP), their launcher, placement and timeouts

Flow: `LLM(model, **kwargs)`, `AsyncLLM(model, **kwargs)` and the `gptoss generate` flags use the flat field names;
`EngineConfig.from_kwargs` routes each to the part that declares it (every name is in exactly one part). A cluster
config embeds the parts as they are. Each part validates itself in `__post_init__`: a ValueError whose message
starts with the field name and says what to change. The checkpoint's architecture (read from its config.json) is
`engine.model.config.GptOssConfig`, loaded by the engine from `ModelConfig.model`. No torch here: the cluster
imports this module to validate its YAML.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.model.config import GptOssConfig

DTYPES = ("float32", "bfloat16")
BACKENDS = ("auto", "reference", "kernels")
POLICIES = ("fcfs", "priority")
EXECUTOR_BACKENDS = ("mp", "ray")
PLACEMENT_STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD")
MOE_DISPATCH = ("allreduce", "alltoall")
CPU_KV_CACHE_BYTES = 256 << 20  # the KV budget on CPU when kv_cache_memory is None (per rank)


def _fail(name: str, allowed: str, value) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(name, "a positive integer", value)


@dataclass
class ModelConfig:
    """Which checkpoint, and how this engine runs it."""

    model: str | Path | None = None  # checkpoint directory (HF layout, or one holding original/); required to run
    dtype: str = "bfloat16"  # weights and activations: "float32" or "bfloat16"
    device: str | None = None  # "cpu", "cuda", "cuda:N", or None for cuda when available
    max_model_len: int | None = None  # context limit in tokens; None: the checkpoint's max_position_embeddings
    backend: str = "auto"  # "reference" (dense experts, torch), "kernels" (packed MXFP4 experts, Triton on CUDA),
    #                        or "auto": kernels on CUDA or with GPTOSS_FORCE_TRITON=1, reference otherwise
    enforce_eager: bool = False  # never capture CUDA graphs (always so on CPU, with the reference backend, or ranks)
    cuda_graph_batch_sizes: tuple[int, ...] | None = None  # decode batch sizes captured; None: engine.cuda_graphs'
    #                                                        defaults up to max_num_seqs

    def __post_init__(self):
        if self.dtype not in DTYPES:
            _fail("dtype", f"one of {list(DTYPES)}", self.dtype)
        if self.device is not None:
            self.device = str(self.device)  # a torch.device is accepted too
            if self.device.split(":")[0] not in ("cpu", "cuda"):
                _fail("device", "'cpu', 'cuda', 'cuda:N' or None (cuda when available)", self.device)
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len)
        if self.backend not in BACKENDS:
            _fail("backend", f"one of {list(BACKENDS)}", self.backend)
        sizes = self.cuda_graph_batch_sizes
        if sizes is not None:
            if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
                _fail("cuda_graph_batch_sizes", "a non-empty list of positive integers or None", sizes)
            self.cuda_graph_batch_sizes = tuple(sizes)

    def context_limit(self, max_position_embeddings: int) -> int:
        """Tokens one sequence may hold: max_model_len, at most the checkpoint's max_position_embeddings."""
        return min(self.max_model_len or max_position_embeddings, max_position_embeddings)


@dataclass
class CacheConfig:
    """The paged KV cache (engine.kv_cache_manager): per rank with several ranks."""

    block_size: int = 16  # tokens per KV block, a power of two
    kv_cache_memory: int | None = None  # bytes for the KV cache; None: gpu_memory_utilization on CUDA, 256 MiB on CPU
    gpu_memory_utilization: float = 0.9  # fraction of the free GPU memory (after loading) given to the KV cache
    enable_prefix_caching: bool = True  # reuse the KV blocks of shared prompt prefixes

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size < 1 or self.block_size & (self.block_size - 1):
            _fail("block_size", "a power of two", self.block_size)
        if self.kv_cache_memory is not None and not (isinstance(self.kv_cache_memory, int)
                                                     and self.kv_cache_memory > 0):
            _fail("kv_cache_memory", "a positive number of bytes or None", self.kv_cache_memory)
        if not 0 < self.gpu_memory_utilization <= 1:
            _fail("gpu_memory_utilization", "in (0, 1]", self.gpu_memory_utilization)

    def kv_budget(self, device_type: str, free_device_bytes: int = 0) -> int:
        """Bytes this rank gives its KV cache (`free_device_bytes`: free GPU memory after loading)."""
        if self.kv_cache_memory is not None:
            return self.kv_cache_memory
        if device_type == "cuda":
            return int(free_device_bytes * self.gpu_memory_utilization)
        return CPU_KV_CACHE_BYTES


@dataclass
class SchedulerConfig:
    """Continuous batching (engine.scheduler): which requests run each step."""

    max_num_seqs: int = 256  # requests running at once (per attention group with data parallelism)
    max_num_batched_tokens: int = 2048  # tokens computed per step (prefill chunks + decodes)
    max_waiting_requests: int | None = None  # waiting-queue limit, past it QueueFullError; None: unbounded
    scheduling_policy: str = "fcfs"  # "fcfs" or "priority" (lower SamplingParams.priority runs first, then arrival)
    async_scheduling: bool | None = None  # schedule step N+1 and process step N's outputs while step N+1 runs on
    #                                       the device; False: one step at a time (schedule, run, process); None: on
    #                                       for CUDA, off on CPU (the forward runs on the host's own cores there, so
    #                                       there is nothing to hide the host work behind: bench/results/README.md)

    def __post_init__(self):
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.max_waiting_requests is not None and not (isinstance(self.max_waiting_requests, int)
                                                          and self.max_waiting_requests >= 0):
            _fail("max_waiting_requests", ">= 0 or None", self.max_waiting_requests)
        if self.scheduling_policy not in POLICIES:
            _fail("scheduling_policy", f"one of {list(POLICIES)}", self.scheduling_policy)
        if self.async_scheduling not in (None, True, False):
            _fail("async_scheduling", "true, false or null (on for CUDA)", self.async_scheduling)

    def async_on(self, device_type: str) -> bool:
        """Whether steps overlap on a `device_type` ("cuda" or "cpu") engine."""
        return self.async_scheduling if self.async_scheduling is not None else device_type == "cuda"


@dataclass
class ParallelConfig:
    """How one engine spreads over ranks (engine.parallel, docs/parallelism.md). Ranks form a (data-parallel group)
    x (tensor-parallel rank) grid: rank = dp_rank * TP + tp_rank, so the ranks of one attention group are
    neighbours. The MoE spans every rank: experts partitioned over all of them with expert parallelism
    (EP = TP x DP, as in vLLM), else each expert's intermediate dimension is."""

    tensor_parallel_size: int = 1  # TP: ranks that split the attention heads and the vocabulary of one group
    data_parallel_size: int = 1  # DP: attention groups, each serving its own requests with its own KV cache
    enable_expert_parallel: bool = False  # experts partitioned over all TP x DP ranks; else split along I
    distributed_executor_backend: str = "mp"  # "mp": local processes; "ray": actors in a placement group
    collective_timeout_s: float = 60.0  # a collective, or a step waiting on a rank, fails after this long
    startup_timeout_s: float = 1800.0  # ranks must have loaded their shards within this long
    placement_strategy: str = "PACK"  # Ray placement group strategy (one bundle per rank)
    moe_dispatch: str = "allreduce"  # "allreduce": every rank sees every token (all-gather / reduce-scatter
    #                                  across DP groups); "alltoall": tokens go only to their experts' ranks (EP)

    def __post_init__(self):
        _positive_int("tensor_parallel_size", self.tensor_parallel_size)
        _positive_int("data_parallel_size", self.data_parallel_size)
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            _fail("distributed_executor_backend", f"one of {EXECUTOR_BACKENDS}", self.distributed_executor_backend)
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            _fail("placement_strategy", f"one of {PLACEMENT_STRATEGIES}", self.placement_strategy)
        if self.moe_dispatch not in MOE_DISPATCH:
            _fail("moe_dispatch", f"one of {MOE_DISPATCH}", self.moe_dispatch)
        if self.moe_dispatch == "alltoall" and not self.enable_expert_parallel:
            raise ValueError("moe_dispatch='alltoall' sends tokens to the ranks that hold their experts, which "
                             "needs enable_expert_parallel=True (or use moe_dispatch='allreduce')")
        for name in ("collective_timeout_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                _fail(name, "a positive number of seconds", getattr(self, name))

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    def check_model(self, c: "GptOssConfig") -> None:
        """Raise a ValueError naming the size to change if the checkpoint cannot be split this way."""
        tp, world = self.tensor_parallel_size, self.world_size
        if c.num_attention_heads % tp:
            raise ValueError(f"tensor_parallel_size {tp} must divide num_attention_heads {c.num_attention_heads}")
        kv = c.num_key_value_heads
        if (kv % tp if tp <= kv else tp % kv):
            raise ValueError(f"tensor_parallel_size {tp} must divide num_key_value_heads {kv} or be a multiple "
                             "of it (KV heads are then replicated)")
        if self.enable_expert_parallel and c.num_experts < world:
            raise ValueError(f"expert parallelism over {world} ranks needs at least {world} experts, the model "
                             f"has {c.num_experts}; use fewer ranks or drop enable_expert_parallel")
        if not self.enable_expert_parallel and c.intermediate_size // 32 < world:
            raise ValueError(f"intermediate_size {c.intermediate_size} has {c.intermediate_size // 32} MXFP4 "
                             f"blocks of 32, fewer than the {world} ranks that split it; set "
                             "enable_expert_parallel or use fewer ranks")


@dataclass
class EngineConfig:
    """Every setting of one engine, by area."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the checkpoint and how it runs
    cache: CacheConfig = field(default_factory=CacheConfig)  # the paged KV cache
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # continuous batching
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # ranks

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineConfig":
        """Flat keyword arguments (the `LLM`/`AsyncLLM` ones: `model=DIR, dtype=..., max_num_seqs=...`), each to
        the part that declares it. An unknown name raises TypeError listing the known ones."""
        unknown = sorted(set(kwargs) - set(FIELD_PARTS))
        if unknown:
            raise TypeError(f"unknown engine arguments {unknown}; known: {sorted(FIELD_PARTS)}")
        parts = {part: {} for part in PARTS}
        for name, value in kwargs.items():
            parts[FIELD_PARTS[name]][name] = value
        return cls(**{part: PARTS[part](**values) for part, values in parts.items()})

    def to_kwargs(self) -> dict:
        """The flat form `from_kwargs` takes (every field of every part)."""
        return {name: getattr(getattr(self, part), name) for name, part in FIELD_PARTS.items()}


PARTS = {f.name: f.default_factory for f in fields(EngineConfig)}  # part name -> its class
FIELD_PARTS = {f.name: part for part, cls in PARTS.items() for f in fields(cls)}  # flat field name -> part name
assert len(FIELD_PARTS) == sum(len(fields(cls)) for cls in PARTS.values()), "a field name is in two parts"
