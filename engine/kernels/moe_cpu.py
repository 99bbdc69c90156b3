"""Mixture-of-experts MLP on MXFP4 experts, the torch path used on CPU (engine.kernels dispatches to it off Triton).

Flow of `moe_mxfp4_cpu` (same arguments and result as moe.moe_mxfp4_ref, computing in x's dtype):
  group  : the (token, k) assignments sorted by expert with one argsort; the per-expert counts read once
  expert : per active expert, its tokens gathered -> linear_mxfp4(W1) -> swiglu -> linear_mxfp4(W2)
  combine: weighted rows added into the fp32 output (index_add_)
`linear_mxfp4` makes one pass over an expert matrix's packed bytes per step, whatever its token count: a tile of
rows decoded at a time (`engine.weights.mxfp4.decode_rows`) then multiplied with all of the expert's tokens, or
for a few tokens the decode fused into the dot products. Big matrices run the decode through torch.compile
(inductor's C++: one fused pass instead of eager's gather, cast and multiply passes). No dense copy of an
expert, let alone of all of them, is ever made.
"""

import logging

import torch
import torch.nn.functional as F

from engine.weights.mxfp4 import decode_rows

from .moe import _swiglu_ref

log = logging.getLogger(__name__)

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
    order = flat.argsort(stable=True)  # assignment t * K + k, grouped by expert, the -1 ids first
    counts = torch.bincount(flat + 1, minlength=w1_blocks.shape[0] + 1).tolist()  # [E + 1], index 0: id -1
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


TILE_BYTES = 1 << 19  # packed bytes decoded at a time: big enough that the per-tile torch calls cost little next
#                       to the decode (gpt-oss-20b: 6 tiles per expert matrix), small enough to stay in the L3 cache
COMPILE_MIN_BYTES = 1 << 20  # expert matrices this big (packed) decode through torch.compile'd code: one fused pass
#                              instead of eager's four (about 5x faster); smaller ones are not worth a compile
FUSED_MAX_TOKENS = 4  # with compiled code, up to this many tokens of an expert take the decode fused into the dot
#                       products (the weights never written out as floats: at batch 1 about 2x the tiled path)


def linear_mxfp4(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [n, K] @ W.T + bias with W [R, K] as MXFP4 blocks [R, K/32, 16] and scales [R, K/32]  ->  [n, R] in x's
    dtype: W decoded into x's dtype a tile of output rows at a time (each output is one whole dot product), or for
    a few tokens of a big matrix the decode fused into the dot products (fp32 sums)."""
    big = blocks.numel() >= COMPILE_MIN_BYTES
    if big and x.shape[0] <= FUSED_MAX_TOKENS:
        out = _run_compiled(_matvec_mxfp4, x, blocks, scales)
        if out is not None:
            return (out + bias.float()).to(x.dtype)
    R = blocks.shape[0]
    tile = min(R, max(1, TILE_BYTES // (blocks.shape[1] * blocks.shape[2])))
    out = torch.empty(x.shape[0], R, dtype=x.dtype, device=x.device)
    for r in range(0, R, tile):
        b, s = blocks[r : r + tile], scales[r : r + tile]
        w = _run_compiled(decode_rows, b, s, x.dtype) if big else None
        w = decode_rows(b, s, x.dtype) if w is None else w
        out[:, r : r + tile] = F.linear(x, w, bias[r : r + tile].to(x.dtype))
    return out


def _matvec_mxfp4(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [n, K] @ W.T in fp32 with W [R, K] in MXFP4; compiled, the decode fuses into the reduction (run eagerly
    it would make [n, R, K]: only ever called compiled)."""
    w = decode_rows(blocks, scales, torch.float32)  # [R, K]
    return (x.float()[:, None, :] * w[None]).sum(-1)


_COMPILED: dict = {"ok": True}  # function -> its torch.compile'd version; "ok" False once inductor failed here


def _run_compiled(fn, *args) -> torch.Tensor | None:
    """fn(*args) through torch.compile (dynamic shapes: one compile serves every matrix and tile); None when
    inductor cannot build here (no C++ compiler): warned once, the callers take the eager path from then on."""
    if not _COMPILED["ok"]:
        return None
    try:
        if fn not in _COMPILED:
            _COMPILED[fn] = torch.compile(fn, dynamic=True)
        return _COMPILED[fn](*args)
    except Exception as e:  # noqa: BLE001 - whatever stops the build, the eager decode gives the same numbers
        log.warning("torch.compile cannot build the MXFP4 decode here (%s); experts decode in eager mode", e)
        _COMPILED["ok"] = False
        return None
