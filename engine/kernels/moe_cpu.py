"""Mixture-of-experts MLP on MXFP4 experts, the torch path used on CPU (engine.kernels dispatches to it off Triton).

Flow of `moe_mxfp4_cpu` (same arguments and result as moe.moe_mxfp4_ref, computing in x's dtype):
  group  : the (token, k) assignments sorted by expert with one argsort; the per-expert counts read once
  expert : per active expert, its tokens gathered -> linear_mxfp4(W1) -> swiglu -> linear_mxfp4(W2)
  combine: weighted rows added into the fp32 output (index_add_)
When every active expert has at most fused_max_tokens tokens (decode; any number where the native kernels decode the
weights once: AMX or AVX512-BF16 for a bf16 model, AVX2's fp32 panels for any), the whole MLP is one native call
(cpu_native.moe, fp32 sums, 512 of an expert's tokens at a time); otherwise `linear_mxfp4` runs the native kernels of cpu_native.c
(engine.kernels.cpu_native: AMX, AVX512-BF16, AVX-512, AVX2 or scalar C, built on first use): up to fused_max_tokens
tokens the decode fused into the dot products (a pass over the packed bytes per 4 tokens) or, for bf16 x, the weights
decoded once into bf16 (AMX tiles or AVX512-BF16 panels) for all the tokens; for more, a tile of rows decoded to fp32 at a time then multiplied with all of the
expert's tokens. Without a C compiler, torch decodes the tiles (`engine.weights.mxfp4.decode_rows`, several times
slower). No dense copy of an expert, let alone of all of them, is ever made.
"""

import torch
import torch.nn.functional as F

from engine.weights.mxfp4 import decode_rows

from . import cpu_native
from .moe import _swiglu_ref

# T = tokens, K = experts per token, E = experts, H = hidden, I = expert intermediate size


def moe_mxfp4_cpu(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w1_blocks: torch.Tensor,
    w1_scales: torch.Tensor,
    b1: torch.Tensor,
    w2_blocks: torch.Tensor,
    w2_scales: torch.Tensor,
    b2: torch.Tensor,
    swiglu_limit: float = 7.0,
    alpha: float = 1.702,
) -> torch.Tensor:
    """The torch path used off Triton (same arguments and result as the ref), computing in x's dtype (bf16 or
    fp32) rather than all in fp32: assignments grouped by expert with one sort, then per active expert one pass over
    its packed weights for all of the expert's tokens at once (`linear_mxfp4`; the decode is exact in bf16 and
    fp32). No dense copy of an expert, let alone of all of them, is ever made."""
    K = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    counts = torch.bincount(flat + 1, minlength=w1_blocks.shape[0] + 1).tolist()  # [E + 1], index 0: id -1
    lib = cpu_native.library()
    if lib is not None and x.device.type == "cpu" and max(counts[1:], default=0) <= fused_max_tokens(lib, x):
        # every expert's tokens fit the native kernels: the whole MLP in one native call
        return cpu_native.moe(lib, x, topk_ids, topk_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2,
                              swiglu_limit, alpha).to(x.dtype)
    order = flat.argsort(stable=True)  # assignment t * K + k, grouped by expert, the -1 ids first
    weights = topk_weights.reshape(-1).float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    start = counts[0]
    for e, n in enumerate(counts[1:]):
        if n == 0:
            continue
        rows = order[start : start + n]
        tokens = rows // K
        start += n
        h = linear_mxfp4(x[tokens], w1_blocks[e], w1_scales[e], b1[e])  # [n, 2I]
        y = linear_mxfp4(_swiglu_ref(h, swiglu_limit, alpha), w2_blocks[e], w2_scales[e], b2[e])  # [n, H]
        out.index_add_(0, tokens, y.float() * weights[rows, None])
    return out.to(x.dtype)


TILE_BYTES = 1 << 18  # packed bytes decoded at a time on the tiled path: a tile's fp32 rows (8x that) stay in L2/L3
MATVEC_MAX_TOKENS = 32  # up to this many tokens of an expert, the native kernel's decode fused into the dot products
#                         beats decoding tiles for an fp32 GEMM (4 tokens per pass over the weights; measured on
#                         AVX-512: 1.4 ms for one token of a gpt-oss-20b W1 where the tiled path takes 8 ms; even at 32)


def fused_max_tokens(lib, x: torch.Tensor) -> int:
    """Up to this many tokens of an expert go through the native kernels (the fused decode-and-dot, or the weights
    decoded once); more through tiles decoded to fp32 and a GEMM. Where the native kernels decode the weights once for
    x's dtype (cpu_native.decodes_once: AMX tiles or AVX512-BF16 panels for bf16, the AVX2 level's fp32 panels for
    any; the larger checkpoint's 2,048-token MoE 2.4x the fp32 tiles' GEMM on AVX512-BF16, 1.25x on a Zen 1 EPYC's
    AVX2) there is no such limit."""
    if cpu_native.decodes_once(lib, x.dtype):
        return 1 << 62
    return MATVEC_MAX_TOKENS


def linear_mxfp4(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [n, K] @ W.T + bias with W [R, K] as MXFP4 blocks [R, K/32, 16] and scales [R, K/32]  ->  [n, R] in x's
    dtype, summed in fp32. With the native kernels (engine.kernels.cpu_native): up to fused_max_tokens tokens one
    native call (AMX for a bf16 x where the CPU has it, else the decode fused into the dot products), more a tile of
    rows decoded to fp32 at a time then one GEMM with all the tokens (x reordered once to the kernels' split order).
    Without them: the same tiles decoded by torch."""
    lib = cpu_native.library()
    if lib is None:
        return _linear_torch(x, blocks, scales, bias)
    xs = cpu_native.split_order(x.float())
    if x.shape[0] <= fused_max_tokens(lib, x):
        return (cpu_native.matvec(lib, xs, blocks, scales, x.dtype == torch.bfloat16) + bias.float()).to(x.dtype)
    R = blocks.shape[0]
    tile = min(R, max(1, TILE_BYTES // (blocks.shape[1] * blocks.shape[2])))
    out = torch.empty(x.shape[0], R, dtype=x.dtype, device=x.device)
    buffer = torch.empty(tile, xs.shape[1], dtype=torch.float32)
    for r in range(0, R, tile):
        b = blocks[r : r + tile]
        w = cpu_native.decode(lib, b, scales[r : r + tile], torch.float32, buffer[: b.shape[0]])
        out[:, r : r + tile] = F.linear(xs, w, bias[r : r + tile].float())
    return out


def _linear_torch(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """linear_mxfp4 without the native kernels: tiles decoded by engine.weights.mxfp4.decode_rows into x's dtype."""
    R = blocks.shape[0]
    tile = min(R, max(1, TILE_BYTES // (blocks.shape[1] * blocks.shape[2])))
    out = torch.empty(x.shape[0], R, dtype=x.dtype, device=x.device)
    for r in range(0, R, tile):
        w = decode_rows(blocks[r : r + tile], scales[r : r + tile], x.dtype)
        out[:, r : r + tile] = F.linear(x, w, bias[r : r + tile].to(x.dtype))
    return out
