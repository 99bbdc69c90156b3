"""Mixture-of-experts MLP on MXFP4 expert weights (gpt-oss `MLPBlock` after the router).

Triton path: four launches, no host sync (decode can be graph-captured). Expert ids are in [0, E) or -1.
  route   : (token, k) assignments sorted by expert; BLOCK_M tiles of sorted rows, each owned by one expert
  gemm1   : act = swiglu(W1_e x + b1_e)            per tile; gate and up rows in one accumulator, paired in the epilogue
  gemm2   : y   = (W2_e act + b2_e) * w_k           per tile, written to the assignment's own row
  combine : out[t] = sum_k y[t, k]                  skipping ids of -1 (experts on another rank)
No dequantized copy of the experts is ever made: bf16 activations meet the packed bytes and scales in tl.dot_scaled
(Triton upcasts each fp4 tile to bf16 in registers for a wgmma / tcgen05 dot); fp32 ones take a software decode
(`_mxfp4_tile`) and ieee fp32 dots.
`plan_moe_mxfp4` decides every launch (engine.kernels.launch).
"""

from dataclasses import dataclass

import torch

from engine.weights.mxfp4 import dequantize_mxfp4

from ._triton import next_pow2, tl, triton
from .launch import Launch, multiprocessors, run

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


def plan_route(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[Routing, list[Launch]]:
    """Routing metadata of `route` and its single-program launch. The tile count is the bound `_num_tiles`;
    tiles past the real count get expert -1."""
    A = topk_ids.numel()
    num_tiles = _num_tiles(A, num_experts, block_m)
    out = [torch.empty(n, dtype=torch.int32, device=topk_ids.device) for n in (A, num_tiles, num_tiles, num_tiles)]
    launch = Launch(_route_kernel, (1,), (topk_ids.reshape(-1), *out, A, num_experts, num_tiles),
                    dict(BLOCK_M=block_m, CHUNK=64, BLOCK_E=next_pow2(num_experts + 1), num_warps=8))
    return Routing(*out, block_m), [launch]


def route(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Routing:
    """Routing metadata in one single-program launch and without a host sync (decode can be graph-captured)."""
    routing, launches = plan_route(topk_ids, num_experts, block_m)
    run(launches)
    return routing


# ------------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _scales(scales_ptr, rows, row_ok, k0, ROW_GROUPS, BLOCK_K: tl.constexpr):
    """Scale exponents of elements [k0, k0 + BLOCK_K) of weight rows [BLOCK_N]  ->  uint8 [BLOCK_N, BLOCK_K / 32]
    (127, a scale of 1, past the row's end). Too narrow for an async copy: the loops prefetch them a step ahead."""
    group = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    mask = row_ok[:, None] & (group < ROW_GROUPS)[None, :]
    return tl.load(scales_ptr + rows[:, None] * ROW_GROUPS + group[None, :], mask=mask, other=127)


@triton.jit
def _cols(ptr, rows, row_ok, k0, K, BLOCK_K: tl.constexpr):
    """Columns [k0, k0 + BLOCK_K) of rows [BLOCK_M] (int64) of a row-major [*, K] matrix (zeros past K)."""
    k = k0 + tl.arange(0, BLOCK_K)
    return tl.load(ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0)


@triton.jit
def _mxfp4_dot(a, w_ptr, exponent, rows, row_ok, k0, ROW_BYTES, acc,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALED_DOT: tl.constexpr):
    """acc + a @ W[rows, k0:k0 + BLOCK_K]^T: a [BLOCK_M, BLOCK_K]; W one expert's MXFP4 rows (w_ptr at the expert,
    rows [BLOCK_N] int32 within it, ROW_BYTES packed bytes per row); exponent [BLOCK_N, BLOCK_K / 32] (`_scales`).

    SCALED_DOT (bf16 a): tl.dot_scaled takes the packed bytes and scales as they are (Triton's fp4 -> bf16 upcast,
    then a wgmma on sm_90, tcgen05 on sm_100). Else (fp32 a): software decode in registers, ieee dots."""
    if SCALED_DOT:
        byte = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        mask = (byte < ROW_BYTES)[:, None] & row_ok[None, :]
        packed = tl.load(w_ptr + rows[None, :] * ROW_BYTES + byte[:, None], mask=mask, other=0)  # [BLOCK_K/2, N]
        return tl.dot_scaled(a, None, "bf16", packed, exponent, "e2m1", acc)
    w_even, w_odd = _mxfp4_tile(w_ptr, tl.trans(exponent), rows, row_ok, k0, ROW_BYTES, BLOCK_K, BLOCK_N)
    a_even, a_odd = tl.split(tl.reshape(a.to(tl.float32), [BLOCK_M, BLOCK_K // 2, 2]))
    acc = tl.dot(a_even, w_even, acc, input_precision="ieee")
    return tl.dot(a_odd, w_odd, acc, input_precision="ieee")


@triton.jit
def _mxfp4_tile(blocks_ptr, exponent, rows, row_ok, k0, ROW_BYTES, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Software decode of elements [k0, k0 + BLOCK_K) of weight rows [BLOCK_N]; exponent [BLOCK_K / 32, BLOCK_N]
    ->  (even, odd) fp32 [BLOCK_K / 2, BLOCK_N]: elements k0 + 2b and k0 + 2b + 1 of each row. The bytes load as
    [group, 16, row]: one 16-byte vector per group of 32 elements, which shares one scale."""
    GROUPS: tl.constexpr = BLOCK_K // 32
    group = k0 // 32 + tl.arange(0, GROUPS)
    mask = ((group * 16 < ROW_BYTES)[:, None] & row_ok[None, :])[:, None, :]
    byte = group[:, None, None] * 16 + tl.arange(0, 16)[None, :, None]  # [GROUPS, 16, 1]
    packed = tl.load(blocks_ptr + rows[None, None, :] * ROW_BYTES + byte, mask=mask, other=0).to(tl.int32)
    scale = (exponent.to(tl.int32) << 23).to(tl.float32, bitcast=True)[:, None, :]  # 2 ** (e - 127), e in 1..254
    even = tl.reshape(_e2m1(packed & 0xF) * scale, [BLOCK_K // 2, BLOCK_N])
    odd = tl.reshape(_e2m1(packed >> 4) * scale, [BLOCK_K // 2, BLOCK_N])
    return even, odd


@triton.jit
def _e2m1(code):
    """4-bit E2M1 code (int32 in 0..15, bit 3 = sign)  ->  fp32 in {0, .5, 1, 1.5, 2, 3, 4, 6} with sign."""
    exp = (code >> 1) & 3
    man = (code & 1).to(tl.float32)
    mag = tl.where(exp == 0, 0.5 * man, (1.0 + 0.5 * man) * (1 << tl.maximum(exp - 1, 0)).to(tl.float32))
    return tl.where((code & 8) != 0, -mag, mag)


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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALED_DOT: tl.constexpr,
):
    # Program (tile, n): W1 rows [n * BLOCK_N, (n + 1) * BLOCK_N) of the tile's expert, gate (even rows) and up (odd)
    # in one accumulator; the epilogue pairs them into act columns [n * BLOCK_N / 2, (n + 1) * BLOCK_N / 2).
    expert, rows, row_ok = _tile_rows(tile_expert_ptr, tile_start_ptr, tile_end_ptr, BLOCK_M)
    if expert < 0:
        return
    token = (tl.load(sorted_rows_ptr + rows, mask=row_ok, other=0) // TOPK).to(tl.int64)
    w_rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of this expert's W1
    w_ok = w_rows < 2 * I
    first_row = expert.to(tl.int64) * 2 * I
    w_ptr += first_row * (H // 2)
    s_ptr += first_row * (H // 32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    exponent = _scales(s_ptr, w_rows, w_ok, 0, H // 32, BLOCK_K)
    for k0 in range(0, H, BLOCK_K):
        next_exponent = _scales(s_ptr, w_rows, w_ok, k0 + BLOCK_K, H // 32, BLOCK_K)
        x = _cols(x_ptr, token, row_ok, k0, H, BLOCK_K)
        acc = _mxfp4_dot(x, w_ptr, exponent, w_rows, w_ok, k0, H // 2, acc, BLOCK_M, BLOCK_N, BLOCK_K, SCALED_DOT)
        exponent = next_exponent
    h = acc + tl.load(b_ptr + first_row + w_rows, mask=w_ok, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(h, [BLOCK_M, BLOCK_N // 2, 2]))
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    act = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
    j = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)  # act columns
    act_off = rows.to(tl.int64)[:, None] * I + j[None, :]
    tl.store(act_ptr + act_off, act.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & (j < I)[None, :])


@triton.jit
def _moe_gemm2_kernel(
    act_ptr, sorted_rows_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr, topk_weights_ptr,  # act [A, I]
    w_ptr, s_ptr, b_ptr, y_ptr,  # w2 [E, H, I/2] u8, scales [E, H, I/32] u8, b2 [E, H]; y [A, H] fp32
    H, I,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALED_DOT: tl.constexpr,
):
    # Program (tile, n): y[assignment, n:n+BLOCK_N] = (act @ W2_e^T + b2_e) * routing weight, in assignment order.
    expert, rows, row_ok = _tile_rows(tile_expert_ptr, tile_start_ptr, tile_end_ptr, BLOCK_M)
    if expert < 0:
        return
    assignment = tl.load(sorted_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns = rows of this expert's W2
    n_ok = n < H
    first_row = expert.to(tl.int64) * H
    w_ptr += first_row * (I // 2)
    s_ptr += first_row * (I // 32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    exponent = _scales(s_ptr, n, n_ok, 0, I // 32, BLOCK_K)
    for k0 in range(0, I, BLOCK_K):
        next_exponent = _scales(s_ptr, n, n_ok, k0 + BLOCK_K, I // 32, BLOCK_K)
        a = _cols(act_ptr, rows.to(tl.int64), row_ok, k0, I, BLOCK_K)
        acc = _mxfp4_dot(a, w_ptr, exponent, n, n_ok, k0, I // 2, acc, BLOCK_M, BLOCK_N, BLOCK_K, SCALED_DOT)
        exponent = next_exponent
    y = acc + tl.load(b_ptr + first_row + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
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


def _gemm_tiles(block_m: int, n_cols: int, busy_tiles: int, sms: int | None, scaled: bool) -> dict:
    """Meta-parameters of a MoE GEMM launch. BLOCK_N is 64, halved (down to 16) while the expected busy programs
    (busy tiles x N tiles) leave SMs idle (decode on a TP shard). BLOCK_K 64 and 4 warps keep the software decode
    (fp32) spill-free; 5 stages keep four async weight loads in flight per program (memory-bound decode)."""
    block_n = 64
    while sms and block_n > 16 and busy_tiles * -(-n_cols // block_n) < sms:
        block_n //= 2
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, SCALED_DOT=scaled, num_warps=4, num_stages=5)


def _block_m(num_assignments: int, num_experts: int) -> int:
    """Rows per tile from the mean rows per expert: 16 (tl.dot's minimum) for decode, up to 64 for prefill."""
    mean = num_assignments / num_experts
    return 16 if mean <= 16 else 32 if mean <= 32 else 64


def plan_moe_mxfp4(
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
    sms: int | None = None,
) -> tuple[torch.Tensor, list[Launch]]:
    """out of `moe_mxfp4` and its four launches (route, gemm1, gemm2, combine; none when T == 0)."""
    T, H = x.shape
    K = topk_ids.shape[1]
    E, I2 = w1_blocks.shape[:2]
    I = I2 // 2
    out = torch.empty_like(x)
    if T == 0:
        return out, []
    weights = (w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2)
    assert all(w.is_contiguous() for w in weights), "expert weights must be contiguous (as loaded)"
    x, topk_ids, topk_weights = x.contiguous(), topk_ids.contiguous(), topk_weights.float().contiguous()
    routing, launches = plan_route(topk_ids, E, _block_m(T * K, E))
    scaled = x.dtype == torch.bfloat16  # tl.dot_scaled on the packed experts; fp32 (or fp16) decode in software
    meta = (routing.sorted_rows, routing.tile_expert, routing.tile_start, routing.tile_end)
    num_tiles = routing.tile_expert.shape[0]
    act = torch.empty(T * K, I, dtype=torch.bfloat16 if scaled else torch.float32, device=x.device)
    sms = multiprocessors(x.device) if sms is None else sms
    busy_tiles = min(T * K, E)  # expected tiles with work at decode: about one per assignment, one per expert at most
    gemm1 = _gemm_tiles(routing.block_m, 2 * I, busy_tiles, sms, scaled)
    launches.append(Launch(_moe_gemm1_kernel, (num_tiles, triton.cdiv(2 * I, gemm1["BLOCK_N"])), (
        x, *meta, w1_blocks, w1_scales, b1, act, H, I, K, swiglu_limit, alpha), gemm1))
    y = torch.empty(T * K, H, dtype=torch.float32, device=x.device)
    gemm2 = _gemm_tiles(routing.block_m, H, busy_tiles, sms, scaled)
    launches.append(Launch(_moe_gemm2_kernel, (num_tiles, triton.cdiv(H, gemm2["BLOCK_N"])), (
        act, *meta, topk_weights, w2_blocks, w2_scales, b2, y, H, I), gemm2))
    block_h = min(1024, next_pow2(H))
    launches.append(Launch(_moe_combine_kernel, (T, triton.cdiv(H, block_h)), (y, topk_ids, out, H),
                           dict(TOPK=K, BLOCK_H=block_h)))
    return out, launches


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
    out, launches = plan_moe_mxfp4(x, topk_ids, topk_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2,
                                   swiglu_limit, alpha)
    run(launches)
    return out
