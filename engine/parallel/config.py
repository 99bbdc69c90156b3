"""How one engine spreads over ranks: the parallel sizes, the launcher, and the failure timeouts.

Ranks form a (data-parallel group) x (tensor-parallel rank) grid: rank = dp_rank * TP + tp_rank, so the ranks
of one attention group are neighbours (one node, NVLink). The MoE spans every rank: experts partitioned over
all of them with expert parallelism (EP = TP x DP, as in vLLM), else each expert's intermediate dimension is.
"""

from dataclasses import dataclass

from engine.model.config import GptOssConfig

BACKENDS = ("mp", "ray")
PLACEMENT_STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD")
MOE_DISPATCH = ("allreduce", "alltoall")


@dataclass(frozen=True)
class ParallelConfig:
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
        for name in ("tensor_parallel_size", "data_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.distributed_executor_backend not in BACKENDS:
            raise ValueError(f"distributed_executor_backend must be one of {BACKENDS}, "
                             f"got {self.distributed_executor_backend!r}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, "
                             f"got {self.placement_strategy!r}")
        if self.moe_dispatch not in MOE_DISPATCH:
            raise ValueError(f"moe_dispatch must be one of {MOE_DISPATCH}, got {self.moe_dispatch!r}")
        if self.moe_dispatch == "alltoall" and not self.enable_expert_parallel:
            raise ValueError("moe_dispatch='alltoall' sends tokens to the ranks that hold their experts, which "
                             "needs enable_expert_parallel=True (or use moe_dispatch='allreduce')")
        for name in ("collective_timeout_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    def check_model(self, c: GptOssConfig) -> None:
        """Raise a ValueError naming the size to change if `c` cannot be split this way."""
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
