"""MoE router top-k: pick the k largest logits per token, then softmax over those k only (gpt-oss order).

The router matmul itself (x @ W_r^T + b_r) is a plain bf16 linear layer and lives with the model, not here.
"""

import torch

from ._triton import next_pow2, tl, triton
from .launch import Launch, run


def router_topk_ref(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E]  ->  (topk_ids int32 [T, k] by descending logit, topk_weights fp32 [T, k])."""
    values, ids = torch.topk(logits.float(), k, dim=-1, sorted=True)
    return ids.to(torch.int32), torch.softmax(values, dim=-1)


@triton.jit
def _router_topk_kernel(
    logits_ptr, ids_ptr, weights_ptr,  # logits [T, E]; ids, weights [T, K]
    E, K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    logits = tl.load(logits_ptr + row * E + cols, mask=cols < E, other=float("-inf")).to(tl.float32)
    slots = tl.arange(0, BLOCK_K)
    top_vals = tl.full([BLOCK_K], float("-inf"), dtype=tl.float32)
    top_ids = tl.zeros([BLOCK_K], dtype=tl.int32)
    for i in tl.static_range(K):  # k rounds of argmax; ties go to the lowest expert id
        best = tl.max(logits, axis=0)
        best_id = tl.min(tl.where(logits == best, cols, BLOCK_E), axis=0)
        top_vals = tl.where(slots == i, best, top_vals)
        top_ids = tl.where(slots == i, best_id, top_ids)
        logits = tl.where(cols == best_id, float("-inf"), logits)
    p = tl.exp(top_vals - tl.max(top_vals, axis=0))
    tl.store(ids_ptr + row * K + slots, top_ids, mask=slots < K)
    tl.store(weights_ptr + row * K + slots, p / tl.sum(p, axis=0), mask=slots < K)


def plan_router_topk(logits: torch.Tensor, k: int) -> tuple[tuple[torch.Tensor, torch.Tensor], list[Launch]]:
    """(ids, weights) of `router_topk` and the launch that fills them: one program per token."""
    T, E = logits.shape
    ids = torch.empty(T, k, dtype=torch.int32, device=logits.device)
    weights = torch.empty(T, k, dtype=torch.float32, device=logits.device)
    launches = []
    if T > 0:
        launches.append(Launch(_router_topk_kernel, (T,), (logits.contiguous(), ids, weights, E),
                               dict(K=k, BLOCK_K=next_pow2(k), BLOCK_E=next_pow2(E))))
    return (ids, weights), launches


def router_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `router_topk_ref`: one program per token, k rounds of argmax over the E logits."""
    result, launches = plan_router_topk(logits, k)
    run(launches)
    return result
