"""MXFP4: the 4-bit expert weight format of gpt-oss (OCP microscaling, E2M1 values with e8m0 scales).

Blocks run along the input (reduction) dimension: 32 values per block packed in 16 bytes, the even element in
the low nibble, plus one scale byte per block holding a power-of-two exponent biased by 127.

    W[r, k] = FP4[nibble(blocks[r, k // 32, (k % 32) // 2], k % 2)] * 2 ** (scales[r, k // 32] - 127)
"""

import torch

FP4_VALUES = (+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK_SIZE = 32  # values per scale
SCALE_BIAS = 127
FP4_MAX = 6.0

# One byte holds two values: this table maps a byte to its (even, odd) pair of bf16 values packed in one int32,
# so decoding is a single gather. Every E2M1 value times a power of two is exact in bf16 (at most 2 significant
# bits), so the bf16 product below is exact too and casting it to fp32 loses nothing.
_PAIRS_BF16 = torch.tensor([[FP4_VALUES[b & 0xF], FP4_VALUES[b >> 4]] for b in range(256)], dtype=torch.bfloat16)
_PAIRS_AS_INT32 = _PAIRS_BF16.view(torch.int32).reshape(256)
# scale byte -> 2 ** (byte - 127) (e8m0); fp32 keeps the extremes that bf16 would flush
_SCALE_VALUES = torch.ldexp(torch.ones(256), torch.arange(256) - SCALE_BIAS)


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16, chunk_bytes: int = 1 << 22
) -> torch.Tensor:
    """Decode packed MXFP4 to `dtype`.

    blocks: [..., G, 16] uint8, scales: [..., G] uint8  ->  [..., G * 32] dtype.
    Works through the leading rows in chunks of about `chunk_bytes` packed bytes, writing into the preallocated
    result, so the temporaries stay small next to the output (safe on memory-mapped inputs).
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK_SIZE // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    *lead, groups, _ = blocks.shape
    rows = blocks.reshape(-1, groups, BLOCK_SIZE // 2)
    row_scales = scales.reshape(-1, groups)
    out = torch.empty(rows.shape[0], groups * BLOCK_SIZE, dtype=dtype, device=blocks.device)
    step = max(1, chunk_bytes // max(1, groups * BLOCK_SIZE // 2))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = decode_rows(rows[start : start + step], row_scales[start : start + step], dtype)
    return out.reshape(*lead, groups * BLOCK_SIZE)


def decode_rows(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The decode itself, on rows: blocks [R, G, 16], scales [R, G] uint8  ->  [R, G * 32] dtype (the CPU MoE
    runs the native kernels of engine/kernels/cpu_native.c instead where they build; they match this bit for bit).
    A value times its scale is exact in fp32 and, having at most 2 significant bits, stays exact cast to bf16."""
    R, G = scales.shape
    # int64 indices: torch's CPU gather runs several times faster with them than with int32 ones
    values = _PAIRS_AS_INT32.to(blocks.device)[blocks.long()].view(torch.bfloat16).view(R, G, BLOCK_SIZE)
    factor = _SCALE_VALUES.to(blocks.device)[scales.long()].unsqueeze(-1)  # [R, G, 1] fp32
    return (values.float() * factor).to(dtype).view(R, G * BLOCK_SIZE)


def quantize_mxfp4(weight: torch.Tensor, chunk_values: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a float tensor [..., K] (K a multiple of 32) to (blocks [..., K/32, 16], scales [..., K/32]).

    Each block takes the smallest power-of-two scale that fits its largest magnitude into +-6, then each value
    rounds to the nearest E2M1 value (a tie goes to the smaller magnitude). Values already of the form
    FP4 * 2**e round-trip exactly; others are off by at most one scale step (2**e) of their block.
    """
    if weight.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"last dimension {weight.shape[-1]} is not a multiple of {BLOCK_SIZE}")
    *lead, k = weight.shape
    groups = weight.detach().reshape(-1, BLOCK_SIZE)  # [G, 32], G = all blocks
    blocks = torch.empty(groups.shape[0], BLOCK_SIZE // 2, dtype=torch.uint8)
    scales = torch.empty(groups.shape[0], dtype=torch.uint8)
    step = max(1, chunk_values // BLOCK_SIZE)
    for start in range(0, groups.shape[0], step):
        blocks[start : start + step], scales[start : start + step] = _quantize_groups(groups[start : start + step])
    return blocks.reshape(*lead, k // BLOCK_SIZE, BLOCK_SIZE // 2), scales.reshape(*lead, k // BLOCK_SIZE)


# Midpoints between consecutive E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6: bucketize gives the nearest code.
_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])


def _quantize_groups(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()  # [G, 32]
    amax = x.abs().amax(dim=-1)
    exponent = torch.ceil(torch.log2(amax / FP4_MAX)).nan_to_num(-SCALE_BIAS, -SCALE_BIAS, -SCALE_BIAS)
    exponent = exponent.clamp(-SCALE_BIAS, SCALE_BIAS)
    scaled = torch.ldexp(x, -exponent.unsqueeze(-1))
    codes = torch.bucketize(scaled.abs(), _MIDPOINTS).to(torch.uint8) | ((scaled < 0).to(torch.uint8) << 3)
    return codes[:, 0::2] | (codes[:, 1::2] << 4), (exponent + SCALE_BIAS).to(torch.uint8)
