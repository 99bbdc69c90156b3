"""The parallel layers, each named for what it splits and with its collective in `forward`, and the builder that
swaps them into a (meta) `Transformer` before the rank's shard of the weights is loaded (gpt-fast's `apply_tp`).

Token flow through one block on rank (dp g, tp t), T_g = tokens of group g's requests this step:
  x [T_g, D] (replicated in the group) -> q/k/v for this rank's heads -> paged attention over this rank's KV
  heads -> RowParallelLinear o: partial [T_g, D], all-reduce over the group, + bias
  -> MoE: replicated router (ids, weights [T_g, K]) -> dispatch (moe_dispatch.py: all-gather across groups,
  or all-to-all to the experts' ranks) -> this rank's experts (EP) or intermediate slice (TP), partial sums
  -> combine (reduce-scatter + all-reduce, or all-to-all back + all-gather in the group) -> [T_g, D].
Embedding: rows of this rank's vocabulary slice, zeros elsewhere, all-reduce. Unembedding: [T, V/TP] logits
gathered on the group's first rank, which samples.
"""

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from engine import kernels
from engine.model.config import GptOssConfig
from engine.model.kernel_model import KernelMoE, use_kernels
from engine.model.reference import Attention, MoE, Transformer
from engine.parallel import tp as rules
from engine.parallel.comm import Comm, Group
from engine.parallel.moe_dispatch import make_dispatch
from engine.parallel.tp import RankLayout


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + n) of the embedding; ids outside look up zeros; the all-reduce fills them in."""

    def __init__(self, start: int, num_rows: int, dim: int, tp: Group):
        super().__init__()
        self.start, self.tp = start, tp
        self.weight = nn.Parameter(torch.empty(num_rows, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        x = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[:, None], 0)
        if self.tp.size > 1:
            self.tp.all_reduce(x)
        return x


class ParallelLMHead(nn.Module):
    """Vocabulary-parallel unembedding: [T, D] -> this rank's [T, V_t] logits, gathered into the full fp32
    [T, V] on the group's first rank (the one that samples); the others get None."""

    def __init__(self, widths: list[int], dim: int, tp: Group):
        super().__init__()
        self.widths, self.tp = widths, tp
        self.weight = nn.Parameter(torch.empty(widths[tp.rank], dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = F.linear(hidden, self.weight).float()
        if self.tp.size > 1:
            return self.tp.gather_columns(logits, self.widths)
        return logits


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_t W_t^T) + b: the input features are split across the group, the bias is added once."""

    def __init__(self, in_features: int, out_features: int, tp: Group):
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.tp.size > 1:
            self.tp.all_reduce(y)
        return y + self.bias


class _ExpertShard:
    """What both parallel MoEs share: the local expert range and the global -> local id map."""

    def _init_shard(self, config: GptOssConfig, layout: RankLayout, dispatch):
        self.top_k, self.limit, self.dispatch = config.experts_per_token, config.swiglu_limit, dispatch
        self.router = nn.Linear(config.hidden_size, config.num_experts)  # replicated: same routing everywhere
        (self.first_expert, last), (i0, i1) = rules.experts(config, layout), rules.intermediate(config, layout)
        return last - self.first_expert, i1 - i0

    def local_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Global expert ids [T, K] -> indices into this rank's experts, -1 where another rank holds the expert."""
        local = ids - self.first_expert
        return torch.where((local >= 0) & (local < self.b1.shape[0]), local, -1)


class ParallelMoE(_ExpertShard, MoE):
    """The reference MoE over this rank's experts (dense, dequantized) between the dispatch and combine
    collectives of `moe_dispatch`."""

    def __init__(self, config: GptOssConfig, layout: RankLayout, dispatch):
        nn.Module.__init__(self)
        E, I = self._init_shard(config, layout, dispatch)
        D = config.hidden_size
        self.w1, self.b1 = nn.Parameter(torch.empty(E, 2 * I, D)), nn.Parameter(torch.empty(E, 2 * I))
        self.w2, self.b2 = nn.Parameter(torch.empty(E, D, I)), nn.Parameter(torch.empty(E, D))

    def forward(self, x):
        ids, weights = self.route(x)  # replicated router: the same routing on every rank
        xs, ids, weights = self.dispatch.dispatch(x, ids, weights)  # collective: tokens to their experts' ranks
        out = self.experts(xs, self.local_ids(ids), weights)  # this rank's experts only, fp32 partial sums
        return self.dispatch.combine(out).to(x.dtype)  # collective: summed over ranks, back in x's rows


class ParallelKernelMoE(_ExpertShard, KernelMoE):
    """KernelMoE over this rank's packed MXFP4 experts; ids of other ranks' experts become -1 for moe_mxfp4."""

    def __init__(self, config: GptOssConfig, layout: RankLayout, dispatch):
        nn.Module.__init__(self)
        E, I = self._init_shard(config, layout, dispatch)
        self.add_packed_experts(E, config.hidden_size, I)

    def forward(self, x):
        ids, weights = kernels.router_topk(self.router(x), self.top_k)
        xs, ids, weights = self.dispatch.dispatch(x, ids, weights)
        out = kernels.moe_mxfp4(xs, self.local_ids(ids), weights, self.w1_blocks, self.w1_scales, self.b1,
                                self.w2_blocks, self.w2_scales, self.b2, swiglu_limit=self.limit)
        return self.dispatch.combine(out).to(x.dtype)


def build_parallel_model(config: GptOssConfig, weights: dict[str, torch.Tensor], layout: RankLayout, comm: Comm,
                         packed: bool, moe_dispatch: str = "allreduce"):
    """A Transformer holding this rank's shard (`weights` from `load_shard`), its layers swapped for the parallel
    ones above. Returns the MoE dispatcher too: the worker sets its per-group token counts each step."""
    h0, h1 = rules.q_heads(config, layout)
    k0, k1 = rules.kv_heads(config, layout)
    local = replace(config, num_attention_heads=h1 - h0, num_key_value_heads=k1 - k0)
    widths = [b - a for a, b in (rules.split(config.vocab_size, layout.tp_size, t) for t in range(layout.tp_size))]
    dispatch = make_dispatch(moe_dispatch, comm, config.num_experts, layout)
    D = config.hidden_size
    with torch.device("meta"):
        model = Transformer(config)
        if packed:
            use_kernels(model)
        model.embed = VocabParallelEmbedding(rules.vocab_rows(config, layout)[0], widths[layout.tp_rank], D, comm.tp)
        model.unembed = ParallelLMHead(widths, D, comm.tp)
        for i, block in enumerate(model.layers):
            block.attn = Attention(local, i)
            block.attn.o = RowParallelLinear(local.num_attention_heads * config.head_dim, D, comm.tp)
            block.mlp = (ParallelKernelMoE if packed else ParallelMoE)(config, layout, dispatch)
    return Transformer.load(model, weights), dispatch
