"""Mixture-of-experts MLP on MXFP4 expert weights (gpt-oss `MLPBlock` after the router).

Triton path: four launches, no host sync (decode can be graph-captured). Expert ids are in [0, E) or -1.
  route   : (token, k) assignments sorted by expert; BLOCK_M tiles of sorted rows, each owned by one expert
  gemm1   : act = swiglu(W1_e x + b1_e)            per tile, MXFP4 decoded in registers, SwiGLU in the epilogue
  gemm2   : y   = (W2_e act + b2_e) * w_k           per tile, written to the assignment's own row
  combine : out[t] = sum_k y[t, k]                  skipping ids of -1 (experts on another rank)
No dequantized copy of the experts is ever made; each tile reads its expert's packed bytes and scales.
"""

from dataclasses import dataclass

import torch

from engine.weights.mxfp4 import dequantize_mxfp4

from ._triton import INTERPRET, bf16_dots, next_pow2, tl, triton

# T = tokens, K = experts per token, E = experts, H = hidden, I = expert intermediate size, A = T * K assignments


def _swiglu_ref(h: torch.Tensor, limit: float, alpha: float) -> torch.Tensor:
    """h [..., 2I] with gate at even and up at odd columns  ->  [..., I] (gpt-oss clamped SwiGLU)."""
    gate = h[..., 0::2].clamp(max=limit)
    up = h[..., 1::2].clamp(-limit, limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_mxfp4_ref(
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
    """x [T, H]; topk_ids [T, K] int (-1 = skip); topk_weights [T, K]; w1 [E, 2I, H/32, 16] + [E, 2I, H/32] + b1
    [E, 2I]; w2 [E, H, I/32, 16] + [E, H, I/32] + b2 [E, H]  ->  [T, H] in x's dtype, all math in fp32.

    Loops over the experts that have tokens, dequantizing one expert at a time (this is also the CPU path)."""
    xf = x.float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in topk_ids[topk_ids >= 0].unique().tolist():
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        w1 = dequantize_mxfp4(w1_blocks[e], w1_scales[e], torch.float32)  # [2I, H]
        act = _swiglu_ref(xf[token] @ w1.T + b1[e].float(), swiglu_limit, alpha)  # [n, I]
        w2 = dequantize_mxfp4(w2_blocks[e], w2_scales[e], torch.float32)  # [H, I]
        y = act @ w2.T + b2[e].float()
        out.index_add_(0, token, y * topk_weights[token, slot, None].float())
    return out.to(x.dtype)


# ------------------------------------------------------------------------------------------------------ routing


@dataclass
class Routing:
    """Assignments grouped by expert, cut into BLOCK_M-row tiles that each belong to one expert."""

    sorted_rows: torch.Tensor  # [A] int32: flat assignment index t * K + k, grouped by expert, skipped ids last
    tile_expert: torch.Tensor  # [num_tiles] int32: expert of each tile, -1 for spare tiles (grid is a bound)
    tile_start: torch.Tensor  # [num_tiles] int32: first sorted row of the tile
    tile_end: torch.Tensor  # [num_tiles] int32: one past the expert's last sorted row (tile rows stop there)
    block_m: int  # rows per tile


def _num_tiles(num_assignments: int, num_experts: int, block_m: int) -> int:
    """Bound on sum_e cdiv(count_e, block_m): at most one partial tile per expert that has assignments."""
    return -(-num_assignments // block_m) + min(num_experts, num_assignments)


def route_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Routing:
    """Torch twin of `route` (and its oracle): a stable sort by expert, then tiles from per-expert counts."""
    E, A = num_experts, topk_ids.numel()
    key = topk_ids.reshape(-1).long()
    key = torch.where(key >= 0, key, E)  # skipped assignments sort after every expert
    sorted_rows = torch.sort(key, stable=True).indices.to(torch.int32)
    counts = torch.zeros(E + 1, dtype=torch.int64, device=key.device).scatter_add_(0, key, torch.ones_like(key))[:E]
    expert_end = counts.cumsum(0)
    tiles = (counts + block_m - 1) // block_m
    tiles_end = tiles.cumsum(0)  # [E]
    tile = torch.arange(_num_tiles(A, E, block_m), device=key.device)
    expert = torch.searchsorted(tiles_end, tile, right=True)  # E for spare tiles
    real = expert < E
    e = expert.clamp(max=E - 1)
    tile_start = expert_end[e] - counts[e] + (tile - (tiles_end[e] - tiles[e])) * block_m
    return Routing(
        sorted_rows,
        torch.where(real, expert, -1).int(),
        torch.where(real, tile_start, 0).int(),
        torch.where(real, expert_end[e], 0).int(),
        block_m,
    )


@triton.jit
def _route_keys(ids_ptr, a, A, E):
    """Sort key of assignments a: the expert, E for a skipped id (-1), -1 past the end (counted nowhere)."""
    ids = tl.load(ids_ptr + a, mask=a < A, other=0)
    return tl.where(a < A, tl.where(ids >= 0, ids, E), -1)


@triton.jit
def _route_kernel(
    ids_ptr, sorted_rows_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr,  # ids [A]; outputs as in Routing
    A, E, NUM_TILES,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr,  # BLOCK_E > E: bin E holds skipped ids
):
    # One program. Comparisons against a one-hot [CHUNK, BLOCK_E] stand in for histogram, gather and scatter.
    bins = tl.arange(0, BLOCK_E)
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for a0 in range(0, A, CHUNK):
        key = _route_keys(ids_ptr, a0 + tl.arange(0, CHUNK), A, E)
        counts += tl.sum((key[:, None] == bins[None, :]).to(tl.int32), axis=0)
    ends = tl.cumsum(counts, axis=0)
    # Stable counting sort: position = start of the key's bin + earlier assignments with the same key.
    taken = ends - counts  # next free row per bin
    for a0 in range(0, A, CHUNK):
        a = a0 + tl.arange(0, CHUNK)
        onehot = (_route_keys(ids_ptr, a, A, E)[:, None] == bins[None, :]).to(tl.int32)
        before = tl.cumsum(onehot, axis=0) - onehot + taken[None, :]
        tl.store(sorted_rows_ptr + tl.sum(before * onehot, axis=1), a, mask=a < A)
        taken += tl.sum(onehot, axis=0)
    # Tiles: expert of tile t = number of experts whose tiles all end at or before t (searchsorted, right).
    tiles = tl.where(bins < E, (counts + BLOCK_M - 1) // BLOCK_M, 0)
    tiles_end = tl.cumsum(tiles, axis=0)
    for t0 in range(0, NUM_TILES, CHUNK):
        t = t0 + tl.arange(0, CHUNK)
        expert = tl.sum((tiles_end[None, :] <= t[:, None]).to(tl.int32), axis=1)
        real = expert < E
        onehot = (expert[:, None] == bins[None, :]).to(tl.int32)
        end = tl.sum(onehot * ends[None, :], axis=1)
        first_row = end - tl.sum(onehot * counts[None, :], axis=1)
        first_tile = tl.sum(onehot * (tiles_end - tiles)[None, :], axis=1)
        in_range = t < NUM_TILES
        tl.store(tile_expert_ptr + t, tl.where(real, expert, -1), mask=in_range)
        tl.store(tile_start_ptr + t, tl.where(real, first_row + (t - first_tile) * BLOCK_M, 0), mask=in_range)
        tl.store(tile_end_ptr + t, tl.where(real, end, 0), mask=in_range)


def route(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Routing:
    """Routing metadata in one single-program launch and without a host sync (decode can be graph-captured).

    The tile count is the bound `_num_tiles`; tiles past the real count get expert -1."""
    A = topk_ids.numel()
    num_tiles = _num_tiles(A, num_experts, block_m)
    out = [torch.empty(n, dtype=torch.int32, device=topk_ids.device) for n in (A, num_tiles, num_tiles, num_tiles)]
    _route_kernel[(1,)](
        topk_ids.reshape(-1), *out, A, num_experts, num_tiles,
        BLOCK_M=block_m, CHUNK=64, BLOCK_E=next_pow2(num_experts + 1), num_warps=8,
    )
    return Routing(*out, block_m)


# ------------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _mxfp4_tile(blocks_ptr, scales_ptr, row, byte, mask, ROW_BYTES, ROW_GROUPS):
    """Decode a [BYTES, N] tile of one expert's packed weights: row [N] (int64 output rows), byte [BYTES] (byte
    index along the reduction dim)  ->  (even, odd) fp32 [BYTES, N]: elements 2 * byte and 2 * byte + 1."""
    packed = tl.load(blocks_ptr + row[None, :] * ROW_BYTES + byte[:, None], mask=mask, other=0).to(tl.int32)
    exponent = tl.load(scales_ptr + row[None, :] * ROW_GROUPS + byte[:, None] // 16, mask=mask, other=127)
    scale = (exponent.to(tl.int32) << 23).to(tl.float32, bitcast=True)  # 2 ** (e - 127), exact for e in 1..254
    return _e2m1(packed & 0xF) * scale, _e2m1(packed >> 4) * scale


@triton.jit
def _e2m1(code):
    """4-bit E2M1 code (int32 in 0..15, bit 3 = sign)  ->  fp32 in {0, .5, 1, 1.5, 2, 3, 4, 6} with sign."""
    exp = (code >> 1) & 3
    man = (code & 1).to(tl.float32)
    mag = tl.where(exp == 0, 0.5 * man, (1.0 + 0.5 * man) * (1 << tl.maximum(exp - 1, 0)).to(tl.float32))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _dot(a, b, acc, DOT_BF16: tl.constexpr):
    if DOT_BF16:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _tile_rows(tile_expert_ptr, tile_start_ptr, tile_end_ptr, BLOCK_M: tl.constexpr):
    """-> (expert, sorted row indices [BLOCK_M], row mask) of this program's tile."""
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    rows = tl.load(tile_start_ptr + tile) + tl.arange(0, BLOCK_M)
    return expert, rows, rows < tl.load(tile_end_ptr + tile)


@triton.jit
def _moe_gemm1_kernel(
    x_ptr, sorted_rows_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr,  # x [T, H]
    w_ptr, s_ptr, b_ptr, act_ptr,  # w1 [E, 2I, H/2] u8, scales [E, 2I, H/32] u8, b1 [E, 2I]; act [A, I]
    H, I, TOPK, limit, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_BF16: tl.constexpr,
):
    # Program (tile, n): act[rows, n:n+BLOCK_N] of the tile's expert; gate = W1 row 2j, up = row 2j + 1.
    expert, rows, row_ok = _tile_rows(tile_expert_ptr, tile_start_ptr, tile_end_ptr, BLOCK_M)
    if expert < 0:
        return
    token = (tl.load(sorted_rows_ptr + rows, mask=row_ok, other=0) // TOPK).to(tl.int64)
    j = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # act columns
    j_ok = j < I
    gate_row = expert.to(tl.int64) * 2 * I + 2 * j  # [BLOCK_N] rows of W1
    kb = tl.arange(0, BLOCK_K // 2)
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        byte = k0 // 2 + kb  # [BLOCK_K / 2]; element 2 * byte is even, 2 * byte + 1 odd
        k_ok = byte < H // 2
        x_mask = row_ok[:, None] & k_ok[None, :]
        x_even = tl.load(x_ptr + token[:, None] * H + 2 * byte[None, :], mask=x_mask, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + token[:, None] * H + 2 * byte[None, :] + 1, mask=x_mask, other=0.0).to(tl.float32)
        w_mask = k_ok[:, None] & j_ok[None, :]
        g_even, g_odd = _mxfp4_tile(w_ptr, s_ptr, gate_row, byte, w_mask, H // 2, H // 32)
        acc_gate = _dot(x_odd, g_odd, _dot(x_even, g_even, acc_gate, DOT_BF16), DOT_BF16)
        u_even, u_odd = _mxfp4_tile(w_ptr, s_ptr, gate_row + 1, byte, w_mask, H // 2, H // 32)
        acc_up = _dot(x_odd, u_odd, _dot(x_even, u_even, acc_up, DOT_BF16), DOT_BF16)
    gate = acc_gate + tl.load(b_ptr + gate_row, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    up = acc_up + tl.load(b_ptr + gate_row + 1, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    act = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
    act_off = rows.to(tl.int64)[:, None] * I + j[None, :]
    tl.store(act_ptr + act_off, act.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & j_ok[None, :])


@triton.jit
def _moe_gemm2_kernel(
    act_ptr, sorted_rows_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr, topk_weights_ptr,  # act [A, I]
    w_ptr, s_ptr, b_ptr, y_ptr,  # w2 [E, H, I/2] u8, scales [E, H, I/32] u8, b2 [E, H]; y [A, H] fp32
    H, I,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_BF16: tl.constexpr,
):
    # Program (tile, n): y[assignment, n:n+BLOCK_N] = (act @ W2_e^T + b2_e) * routing weight, in assignment order.
    expert, rows, row_ok = _tile_rows(tile_expert_ptr, tile_start_ptr, tile_end_ptr, BLOCK_M)
    if expert < 0:
        return
    assignment = tl.load(sorted_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns
    n_ok = n < H
    w_row = expert.to(tl.int64) * H + n
    kb = tl.arange(0, BLOCK_K // 2)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        byte = k0 // 2 + kb
        k_ok = byte < I // 2
        a_off = rows.to(tl.int64)[:, None] * I + 2 * byte[None, :]
        a_mask = row_ok[:, None] & k_ok[None, :]
        a_even = tl.load(act_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
        a_odd = tl.load(act_ptr + a_off + 1, mask=a_mask, other=0.0).to(tl.float32)
        w_even, w_odd = _mxfp4_tile(w_ptr, s_ptr, w_row, byte, k_ok[:, None] & n_ok[None, :], I // 2, I // 32)
        acc = _dot(a_odd, w_odd, _dot(a_even, w_even, acc, DOT_BF16), DOT_BF16)
    y = acc + tl.load(b_ptr + w_row, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y * tl.load(topk_weights_ptr + assignment, mask=row_ok, other=0.0)[:, None]
    tl.store(y_ptr + assignment[:, None] * H + n[None, :], y, mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_combine_kernel(
    y_ptr, topk_ids_ptr, out_ptr,  # y [T * K, H] fp32; topk_ids [T, K]; out [T, H]
    H, TOPK: tl.constexpr, BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        if tl.load(topk_ids_ptr + token * TOPK + k) >= 0:
            acc += tl.load(y_ptr + (token * TOPK + k) * H + cols, mask=cols < H, other=0.0)
    tl.store(out_ptr + token * H + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < H)


# ------------------------------------------------------------------------------------------------------ launcher


def _block_m(num_assignments: int, num_experts: int) -> int:
    """Rows per tile from the mean rows per expert: 16 (tl.dot's minimum) for decode, up to 64 for prefill."""
    mean = num_assignments / num_experts
    return 16 if mean <= 16 else 32 if mean <= 32 else 64


def moe_mxfp4(
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
    """Triton twin of `moe_mxfp4_ref` (same arguments and result); see the module docstring for the steps."""
    T, H = x.shape
    K = topk_ids.shape[1]
    E, I2 = w1_blocks.shape[:2]
    I = I2 // 2
    out = torch.empty_like(x)
    if T == 0:
        return out
    weights = (w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2)
    assert all(w.is_contiguous() for w in weights), "expert weights must be contiguous (as loaded)"
    x, topk_ids, topk_weights = x.contiguous(), topk_ids.contiguous(), topk_weights.float().contiguous()
    routing = route(topk_ids, E, _block_m(T * K, E))
    dot_bf16 = bf16_dots(x.dtype)
    block_k = 64 if INTERPRET else 128
    meta = (routing.sorted_rows, routing.tile_expert, routing.tile_start, routing.tile_end)
    num_tiles = routing.tile_expert.shape[0]
    act = torch.empty(T * K, I, dtype=torch.bfloat16 if dot_bf16 else torch.float32, device=x.device)
    _moe_gemm1_kernel[(num_tiles, triton.cdiv(I, 64))](
        x, *meta, w1_blocks, w1_scales, b1, act, H, I, K, swiglu_limit, alpha,
        BLOCK_M=routing.block_m, BLOCK_N=64, BLOCK_K=block_k, DOT_BF16=dot_bf16, num_warps=4, num_stages=3,
    )
    y = torch.empty(T * K, H, dtype=torch.float32, device=x.device)
    _moe_gemm2_kernel[(num_tiles, triton.cdiv(H, 64))](
        act, *meta, topk_weights, w2_blocks, w2_scales, b2, y, H, I,
        BLOCK_M=routing.block_m, BLOCK_N=64, BLOCK_K=block_k, DOT_BF16=dot_bf16, num_warps=4, num_stages=3,
    )
    block_h = min(1024, next_pow2(H))
    _moe_combine_kernel[(T, triton.cdiv(H, block_h))](y, topk_ids, out, H, TOPK=K, BLOCK_H=block_h)
    return out
