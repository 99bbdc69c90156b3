"""The engine's settings: one tree, each setting and its default declared once.

    EngineConfig
      model: ModelConfig          which checkpoint and how it runs: dtype, device, context limit, backend, CUDA graphs
      cache: CacheConfig          the paged KV cache: block size, memory budget, prefix caching
      scheduler: SchedulerConfig  continuous batching: seats, token budget, waiting queue, policy, async scheduling
      parallel: ParallelConfig    ranks (TP x DP, EP), their launcher, placement and timeouts
      structured: StructuredConfig  constrained decoding: grammar compile timeout, the default reasoning budget

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


def setting(default, doc: str, *, choices: tuple | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None):
    """A field declared once: its default, its one-line documentation (the `gptoss generate` flag's help, the
    cluster YAML's and the Helm values schema's description) and its range or choices, checked by `check_fields`
    here and by the cluster's pydantic section built from the same field (cluster/config.py `engine_section`)."""
    limits = {k: v for k, v in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    return field(default=default, metadata={"doc": doc, **limits})


def check_fields(part) -> None:
    """Raise a ValueError naming the first field of `part` outside its declared choices or range (None passes
    where the default is None)."""
    for f in fields(part):
        value, limits = getattr(part, f.name), f.metadata
        if value is None and f.default is None:
            continue
        if "choices" in limits and value not in limits["choices"]:
            _fail(f.name, f"one of {list(limits['choices'])}", value)
        numeric = {k: limits[k] for k in ("ge", "gt", "le") if k in limits}
        if not numeric:
            continue
        whole = isinstance(f.default, int) or "int" in str(f.type)
        kind = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            _fail(f.name, "an integer" if whole else "a number", value)
        if ("ge" in numeric and value < numeric["ge"]) or ("gt" in numeric and value <= numeric["gt"]) or (
                "le" in numeric and value > numeric["le"]):
            _fail(f.name, _range_text(f.name, numeric), value)


def _range_text(name: str, limits: dict) -> str:
    if limits == {"ge": 1}:
        return "a positive integer"
    if limits == {"gt": 0}:
        return "a positive number of seconds" if name.endswith("_s") else "a positive number"
    return " and ".join(f"{ {'ge': '>=', 'gt': '>', 'le': '<='}[k]} {v}" for k, v in limits.items())


@dataclass
class ModelConfig:
    """Which checkpoint, and how this engine runs it."""

    model: str | Path | None = setting(None, "checkpoint directory (HF layout, or one holding original/); required "
                                             "to run")
    dtype: str = setting("bfloat16", "weights and activations", choices=DTYPES)
    device: str | None = setting(None, "cpu, cuda or cuda:N; None: cuda when available")
    max_model_len: int | None = setting(None, "context limit in tokens (None: the checkpoint's "
                                              "max_position_embeddings)", ge=1)
    backend: str = setting("auto", "kernels (packed MXFP4 experts: Triton on CUDA, engine.kernels' torch CPU ops on "
                                   "CPU), reference (experts dequantized at load, the torch oracle; ~4x the expert "
                                   "memory) or auto (= kernels)", choices=BACKENDS)
    enforce_eager: bool = setting(False, "never capture CUDA graphs for decode steps (they are captured on CUDA at "
                                         "start-up, single-rank engines only)")
    cuda_graph_batch_sizes: tuple[int, ...] | None = setting(None, "decode batch sizes captured as CUDA graphs "
                                                                   "(None: engine.cuda_graphs' defaults up to "
                                                                   "max_num_seqs)")

    def __post_init__(self):
        check_fields(self)
        if self.device is not None:
            self.device = str(self.device)  # a torch.device is accepted too
            if self.device.split(":")[0] not in ("cpu", "cuda"):
                _fail("device", "'cpu', 'cuda', 'cuda:N' or None (cuda when available)", self.device)
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

    block_size: int = setting(16, "tokens per KV-cache block (a power of two)", ge=1)
    kv_cache_memory: int | None = setting(None, "bytes for the KV cache (None: gpu_memory_utilization on CUDA, "
                                                "256 MiB on CPU), per rank", gt=0)
    gpu_memory_utilization: float = setting(0.9, "fraction of the free GPU memory after loading given to the KV "
                                                 "cache", gt=0, le=1)
    enable_prefix_caching: bool = setting(True, "reuse the KV blocks of shared prompt prefixes")

    def __post_init__(self):
        check_fields(self)
        if self.block_size & (self.block_size - 1):
            _fail("block_size", "a power of two", self.block_size)

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

    max_num_seqs: int = setting(256, "requests running at once (per attention group with data parallelism)", ge=1)
    max_num_batched_tokens: int = setting(2048, "tokens computed per step (prefill chunks + decodes)", ge=1)
    max_waiting_requests: int | None = setting(None, "waiting-queue limit; past it new requests are refused "
                                                     "(QueueFullError, HTTP 429); None: unbounded", ge=0)
    scheduling_policy: str = setting("fcfs", "fcfs, or priority (lower SamplingParams.priority runs first, then "
                                             "arrival)", choices=POLICIES)
    async_scheduling: bool | None = setting(None, "schedule step N+1 and process step N's outputs while step N+1 "
                                                  "runs on the device; false: one step at a time; None: on for "
                                                  "CUDA, off on CPU (the forward runs on the host's own cores there)")

    def __post_init__(self):
        check_fields(self)
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

    tensor_parallel_size: int = setting(1, "TP: ranks (GPUs) of one attention group; they split the attention "
                                           "heads, the vocabulary and, without expert parallelism, every expert",
                                        ge=1)
    data_parallel_size: int = setting(1, "DP: attention groups, each with its own requests and KV cache; the MoE "
                                         "spans all of them", ge=1)
    enable_expert_parallel: bool = setting(False, "partition the experts over all TP x DP ranks instead of slicing "
                                                  "each one")
    distributed_executor_backend: str = setting("mp", "with more than one rank: mp (local rank processes) or ray "
                                                      "(one actor per rank in a placement group)",
                                                choices=EXECUTOR_BACKENDS)
    collective_timeout_s: float = setting(60.0, "a collective, or a step waiting on a rank, fails after this long "
                                                "(the engine's requests end with an error, its health check fails)",
                                          gt=0)
    startup_timeout_s: float = setting(1800.0, "ranks must have loaded their shards within this long", gt=0)
    placement_strategy: str = setting("PACK", "ray backend: the placement group strategy (one bundle per rank; "
                                              "PACK: one node when it fits)", choices=PLACEMENT_STRATEGIES)
    moe_dispatch: str = setting("allreduce", "MoE collectives: allreduce (every rank sees every token) or alltoall "
                                             "(tokens go only to their experts' ranks; needs enable_expert_parallel)",
                                choices=MOE_DISPATCH)

    def __post_init__(self):
        check_fields(self)
        if self.moe_dispatch == "alltoall" and not self.enable_expert_parallel:
            raise ValueError("moe_dispatch='alltoall' sends tokens to the ranks that hold their experts, which "
                             "needs enable_expert_parallel=True (or use moe_dispatch='allreduce')")

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
class StructuredConfig:
    """Constrained decoding (engine.structured): requests with a grammar or a reasoning budget."""

    grammar_compile_timeout_s: float = setting(10.0, "a request's schema or pattern must compile within this long, "
                                                     "else a 400 naming the field (compiled off the engine loop, "
                                                     "then cached)", gt=0)
    max_reasoning_tokens: int | None = setting(None, "constrained answers (response_format, text.format, tool_choice "
                                                     "required/named, strict tools): tokens the reasoning may take "
                                                     "before the answer starts, unless the request sets "
                                                     "max_reasoning_tokens (None: half of the request's max_tokens)",
                                               ge=0)

    def __post_init__(self):
        check_fields(self)

    def reasoning_budget(self, requested: int | None, max_tokens: int) -> int:
        """The analysis message's budget for a constrained request."""
        if requested is not None:
            return requested
        return self.max_reasoning_tokens if self.max_reasoning_tokens is not None else max_tokens // 2


@dataclass
class EngineConfig:
    """Every setting of one engine, by area."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the checkpoint and how it runs
    cache: CacheConfig = field(default_factory=CacheConfig)  # the paged KV cache
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # continuous batching
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # ranks
    structured: StructuredConfig = field(default_factory=StructuredConfig)  # constrained decoding

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
FIELDS = {f.name: f for cls in PARTS.values() for f in fields(cls)}  # flat field name -> its dataclass field
assert len(FIELD_PARTS) == sum(len(fields(cls)) for cls in PARTS.values()), "a field name is in two parts"
