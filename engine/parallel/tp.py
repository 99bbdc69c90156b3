"""Sharding rules: which slice of each checkpoint tensor a rank holds. Pure index arithmetic, no torch.distributed.

Attention (per TP group of size TP, rank t):
  q heads [t*Hq/TP, (t+1)*Hq/TP) with their sinks; q/k/v are column-parallel (rows of the weight), o is
  row-parallel (columns of the weight, partial sums all-reduced, bias added once after the sum).
  KV heads: KV/TP of them when TP <= KV; when TP > KV each rank holds the one KV head its query heads read
  (head t*KV//TP), replicated on TP/KV ranks.
Vocabulary (embedding and unembedding): rows [t*V/TP, (t+1)*V/TP) (near-equal, any V).
MoE (over all ranks, rank r of R = TP x DP): router replicated (routing computed once, identically, everywhere);
  expert parallel: experts [r*E/R, (r+1)*E/R) whole;
  tensor parallel: every expert's intermediate units [i0, i1), cut at multiples of 32 because MXFP4 blocks run
  along w2's reduction dimension I. w1's rows are (gate, up) interleaved, so unit i is rows 2i and 2i+1 and a unit
  range [i0, i1) is the row range [2*i0, 2*i1): pairs stay together. b2 is added once: rank 0 keeps it, the
  others hold zeros.
Norms are replicated.
"""

import re
from dataclasses import dataclass

import torch

from engine.config import ParallelConfig
from engine.model.config import GptOssConfig

MXFP4_BLOCK = 32


@dataclass(frozen=True)
class RankLayout:
    """Where one rank sits in the grid."""

    rank: int  # global rank, dp_rank * tp_size + tp_rank
    tp_size: int  # ranks in this rank's attention group
    dp_size: int  # attention groups
    expert_parallel: bool  # MoE split by experts (else by intermediate units)

    @classmethod
    def of(cls, parallel: ParallelConfig, rank: int) -> "RankLayout":
        return cls(rank, parallel.tensor_parallel_size, parallel.data_parallel_size, parallel.enable_expert_parallel)

    @property
    def world_size(self) -> int:
        return self.tp_size * self.dp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp_size

    def tp_group(self, dp_rank: int | None = None) -> list[int]:
        """Global ranks of one attention group (this rank's by default)."""
        g = self.dp_rank if dp_rank is None else dp_rank
        return list(range(g * self.tp_size, (g + 1) * self.tp_size))

    def dp_group(self, tp_rank: int | None = None) -> list[int]:
        """Global ranks holding the same heads in every attention group (the MoE all-gather runs over these)."""
        t = self.tp_rank if tp_rank is None else tp_rank
        return [g * self.tp_size + t for g in range(self.dp_size)]


def split(n: int, parts: int, index: int, unit: int = 1) -> tuple[int, int]:
    """[start, stop) of piece `index` when n (a multiple of `unit`) is cut into `parts` near-equal runs of units."""
    units = n // unit
    return index * units // parts * unit, (index + 1) * units // parts * unit


def q_heads(c: GptOssConfig, layout: RankLayout) -> tuple[int, int]:
    per = c.num_attention_heads // layout.tp_size
    return layout.tp_rank * per, (layout.tp_rank + 1) * per


def kv_heads(c: GptOssConfig, layout: RankLayout) -> tuple[int, int]:
    kv, tp = c.num_key_value_heads, layout.tp_size
    if tp <= kv:
        per = kv // tp
        return layout.tp_rank * per, (layout.tp_rank + 1) * per
    head = layout.tp_rank * kv // tp  # the KV head this rank's query heads read (replicated on tp/kv ranks)
    return head, head + 1


def vocab_rows(c: GptOssConfig, layout: RankLayout) -> tuple[int, int]:
    return split(c.vocab_size, layout.tp_size, layout.tp_rank)


def experts(c: GptOssConfig, layout: RankLayout) -> tuple[int, int]:
    """Experts this rank holds: a contiguous run with EP, all of them otherwise."""
    if not layout.expert_parallel:
        return 0, c.num_experts
    return split(c.num_experts, layout.world_size, layout.rank)


def intermediate(c: GptOssConfig, layout: RankLayout) -> tuple[int, int]:
    """Intermediate units [i0, i1) of every expert this rank holds (all of them with EP)."""
    if layout.expert_parallel:
        return 0, c.intermediate_size
    return split(c.intermediate_size, layout.world_size, layout.rank, MXFP4_BLOCK)


@dataclass(frozen=True)
class TensorShard:
    """The part of one tensor a rank keeps: `stop - start` entries along `dim`, or everything (dim None)."""

    dim: int | None = None
    start: int = 0
    stop: int = 0
    zero: bool = False  # keep the shape but hold zeros (a bias another rank adds)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """A view of the kept part (no copy)."""
        return tensor if self.dim is None else tensor.narrow(self.dim, self.start, self.stop - self.start)


REPLICATED = TensorShard()
_LAYER = re.compile(r"^layers\.\d+\.(.+)$")


def shard_of(name: str, c: GptOssConfig, layout: RankLayout) -> TensorShard:
    """The slice of canonical tensor `name` (engine.weights.checkpoint's names, packed or dequantized) on this rank."""
    if name in ("embed.weight", "unembed.weight"):
        return TensorShard(0, *vocab_rows(c, layout))
    m = _LAYER.match(name)
    suffix = m[1] if m else name
    Dh = c.head_dim
    h0, h1 = q_heads(c, layout)
    k0, k1 = kv_heads(c, layout)
    e0, e1 = experts(c, layout)
    i0, i1 = intermediate(c, layout)
    rules = {
        "attn.q.weight": TensorShard(0, h0 * Dh, h1 * Dh), "attn.q.bias": TensorShard(0, h0 * Dh, h1 * Dh),
        "attn.k.weight": TensorShard(0, k0 * Dh, k1 * Dh), "attn.k.bias": TensorShard(0, k0 * Dh, k1 * Dh),
        "attn.v.weight": TensorShard(0, k0 * Dh, k1 * Dh), "attn.v.bias": TensorShard(0, k0 * Dh, k1 * Dh),
        "attn.o.weight": TensorShard(1, h0 * Dh, h1 * Dh), "attn.sinks": TensorShard(0, h0, h1),
    }
    if layout.expert_parallel:
        rules.update({k: TensorShard(0, e0, e1) for k in ("mlp.w1_blocks", "mlp.w1_scales", "mlp.b1", "mlp.w1",
                                                          "mlp.w2_blocks", "mlp.w2_scales", "mlp.b2", "mlp.w2")})
    else:
        g0, g1 = i0 // MXFP4_BLOCK, i1 // MXFP4_BLOCK
        rules.update({
            "mlp.w1_blocks": TensorShard(1, 2 * i0, 2 * i1), "mlp.w1_scales": TensorShard(1, 2 * i0, 2 * i1),
            "mlp.b1": TensorShard(1, 2 * i0, 2 * i1), "mlp.w1": TensorShard(1, 2 * i0, 2 * i1),
            "mlp.w2_blocks": TensorShard(2, g0, g1), "mlp.w2_scales": TensorShard(2, g0, g1),
            "mlp.w2": TensorShard(2, i0, i1), "mlp.b2": TensorShard(zero=layout.rank != 0),
        })
    return rules.get(suffix, REPLICATED)
