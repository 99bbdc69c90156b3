"""YaRN rotary embedding for gpt-oss, fused with the KV-cache write.

`yarn_cos_sin_cache` builds the table once per model; `rope_and_write_kv` rotates this step's q and k at their
positions and stores the rotated k and the v into the paged cache (see attention.py for the cache layout).
RoPE is half-split: element i pairs with i + D/2 (gpt-oss `_apply_rotary_emb`, not interleaved).
"""

import math

import torch

from ._triton import next_pow2, tl, triton
from .attention import write_kv_ref
from .launch import Launch, run


def yarn_cos_sin_cache(
    head_dim: int,
    max_pos: int,
    theta: float,
    factor: float,
    original_max_pos: int,
    beta_fast: float,
    beta_slow: float,
) -> torch.Tensor:
    """YaRN (arXiv:2309.00071, "NTK by parts") cos/sin table: [max_pos, head_dim] fp32 on CPU.

    Columns [0, D/2) hold cos, [D/2, D) hold sin, both multiplied by the concentration 0.1 * ln(factor) + 1.
    Follows gpt-oss `RotaryEmbedding._compute_concentration_and_inv_freq` (factor <= 1: plain RoPE), including its
    fp32 product position * inv_freq, so tables match the reference bit for bit.
    """
    d_half = head_dim // 2
    freq = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [D/2]
    if factor > 1.0:
        concentration = 0.1 * math.log(factor) + 1.0
        low = d_half * math.log(original_max_pos / (beta_fast * 2 * math.pi)) / math.log(theta)
        high = d_half * math.log(original_max_pos / (beta_slow * 2 * math.pi)) / math.log(theta)
        ramp = ((torch.arange(d_half, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        inv_freq = ramp / (factor * freq) + (1 - ramp) / freq
    else:
        concentration, inv_freq = 1.0, 1.0 / freq
    angles = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [max_pos, D/2]
    return torch.cat([angles.cos() * concentration, angles.sin() * concentration], dim=-1)


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], cos/sin [T, D/2]  ->  rotated x in x's dtype, computed in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rope_and_write_kv_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k/v [T, KV, D], positions [T], cos_sin_cache [max_pos, D], kv_cache [2, N, BS, KV, D],
    slot_mapping [T] (-1 = skip)  ->  (q_rot, k_rot); rotated k and v are written to kv_cache in place."""
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)
    q_rot, k_rot = _rotate_ref(q, cos, sin), _rotate_ref(k, cos, sin)
    write_kv_ref(kv_cache, k_rot, v, slot_mapping)
    return q_rot, k_rot


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, token, cos, sin, HEADS, HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr
):
    """Rotate the HEADS x D row of one token; src/dst are [T, HEADS, D] contiguous. Returns (x1, x2, mask)."""
    heads = tl.arange(0, BLOCK_HEADS)[:, None]
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < HEADS) & (cols < HALF)
    base = token * HEADS * 2 * HALF + heads * 2 * HALF + cols
    x1 = tl.load(src_ptr + base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + base + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    tl.store(dst_ptr + base, o1.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst_ptr + base + HALF, o2.to(dst_ptr.dtype.element_ty), mask=mask)
    return o1, o2, mask


@triton.jit
def _rope_write_kv_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, cos_sin_ptr,  # q [T, HQ, D], k/v [T, KV, D], pos [T], cos_sin [max_pos, D]
    q_out_ptr, k_out_ptr, cache_ptr, slot_ptr,  # cache [2, N, BS, KV, D], slot [T]
    HQ, KV, cache_kv_stride,  # cache_kv_stride = N * BS * KV * D (offset of the values half)
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_KV: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cos_sin_ptr + pos * 2 * HALF + cols, mask=cols < HALF, other=0.0).to(tl.float32)  # [1, D/2]
    sin = tl.load(cos_sin_ptr + pos * 2 * HALF + HALF + cols, mask=cols < HALF, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, token, cos, sin, HQ, HALF, BLOCK_HQ, BLOCK_HALF)
    k1, k2, mask = _rotate_heads(k_ptr, k_out_ptr, token, cos, sin, KV, HALF, BLOCK_KV, BLOCK_HALF)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_KV)[:, None]
        row = heads * 2 * HALF + cols
        dst = cache_ptr + slot * KV * 2 * HALF + row
        tl.store(dst, k1.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, k2.to(cache_ptr.dtype.element_ty), mask=mask)
        v1 = tl.load(v_ptr + token * KV * 2 * HALF + row, mask=mask, other=0.0)
        v2 = tl.load(v_ptr + token * KV * 2 * HALF + row + HALF, mask=mask, other=0.0)
        tl.store(dst + cache_kv_stride, v1.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + cache_kv_stride + HALF, v2.to(cache_ptr.dtype.element_ty), mask=mask)


def plan_rope_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor], list[Launch]]:
    """(q_rot, k_rot) of `rope_and_write_kv` and the launch that fills them (and the cache): one program per token."""
    T, HQ, D = q.shape
    KV = k.shape[1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    q_rot, k_rot = torch.empty_like(q), torch.empty_like(k)
    launches = []
    if T > 0:
        assert kv_cache.is_contiguous() and D % 2 == 0
        launches.append(Launch(_rope_write_kv_kernel, (T,), (
            q, k, v, positions, cos_sin_cache.contiguous(), q_rot, k_rot, kv_cache, slot_mapping,
            HQ, KV, kv_cache[0].numel(),
        ), dict(HALF=D // 2, BLOCK_HALF=next_pow2(D // 2), BLOCK_HQ=next_pow2(HQ), BLOCK_KV=next_pow2(KV))))
    return (q_rot, k_rot), launches


def rope_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `rope_and_write_kv_ref`: one program per token does q, k and the cache write."""
    result, launches = plan_rope_and_write_kv(q, k, v, positions, cos_sin_cache, kv_cache, slot_mapping)
    run(launches)
    return result
