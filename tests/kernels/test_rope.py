"""YaRN cos/sin table against the spec's formulas, and rope_and_write_kv against its ref (rotation + cache write)."""

import math

import pytest
import torch

from engine.kernels.attention import write_kv_ref
from engine.kernels.rope import rope_and_write_kv, rope_and_write_kv_ref, yarn_cos_sin_cache

from ._util import DEVICE, DTYPES, assert_close, triton_path

GPT_OSS_YARN = dict(theta=150000.0, factor=32.0, original_max_pos=4096, beta_fast=32.0, beta_slow=1.0)


def _spec_angle(i, pos, d=64, theta=150000.0, factor=32.0, orig=4096, beta_fast=32.0, beta_slow=1.0):
    """The spec's formulas for inv_freq_i, in float64 Python."""
    low = d * math.log(orig / (beta_fast * 2 * math.pi)) / (2 * math.log(theta))
    high = d * math.log(orig / (beta_slow * 2 * math.pi)) / (2 * math.log(theta))
    freq = theta ** (2 * i / d)
    ramp = min(max((i - low) / (high - low), 0.0), 1.0)
    return pos * (ramp / (factor * freq) + (1 - ramp) / freq)


def test_yarn_cache_matches_spec():
    cache = yarn_cos_sin_cache(64, 5000, **GPT_OSS_YARN)
    assert cache.shape == (5000, 64) and cache.dtype == torch.float32
    concentration = 0.1 * math.log(32) + 1
    for pos in (0, 1, 17, 4095, 4999):
        angles = torch.tensor([_spec_angle(i, pos) for i in range(32)], dtype=torch.float64)
        expected = torch.cat([angles.cos(), angles.sin()]) * concentration
        torch.testing.assert_close(cache[pos].double(), expected, atol=2e-3 * max(1, pos / 1000), rtol=0)


def test_yarn_cache_without_scaling_is_plain_rope():
    cache = yarn_cos_sin_cache(16, 10, theta=10000.0, factor=1.0, original_max_pos=4096, beta_fast=32, beta_slow=1)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).double() / 16)
    angles = torch.arange(10).double()[:, None] * inv_freq
    torch.testing.assert_close(cache.double(), torch.cat([angles.cos(), angles.sin()], -1), atol=1e-6, rtol=0)


def _inputs(T, HQ, KV, D, dtype, num_blocks=4, block_size=4):
    g = torch.Generator().manual_seed(T * 10 + HQ)
    q, k, v = (torch.randn(T, h, D, generator=g).to(dtype).to(DEVICE) for h in (HQ, KV, KV))
    positions = torch.randint(0, 300, (T,), generator=g).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:T]
    slots[T // 2] = -1  # a token that is not cached (e.g. padding)
    cache = torch.zeros(2, num_blocks, block_size, KV, D, dtype=dtype).to(DEVICE)
    return q, k, v, positions, slots.to(DEVICE), cache


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,HQ,KV,D", [(1, 4, 1, 16), (5, 8, 2, 64), (9, 12, 3, 24)])
def test_rope_and_write_kv_matches_ref(T, HQ, KV, D, dtype):
    cos_sin = yarn_cos_sin_cache(D, 300, **GPT_OSS_YARN).to(DEVICE)
    q, k, v, positions, slots, cache = _inputs(T, HQ, KV, D, dtype)
    cache_ref = cache.clone()
    q_rot, k_rot = rope_and_write_kv(q, k, v, positions, cos_sin, cache, slots)
    q_ref, k_ref = rope_and_write_kv_ref(q, k, v, positions, cos_sin, cache_ref, slots)
    assert_close(q_rot, q_ref)
    assert_close(k_rot, k_ref)
    assert_close(cache, cache_ref)


def test_rope_ref_is_complex_rotation():
    """Half-split RoPE = multiply (x_i + i x_{i+D/2}) by concentration * e^{i angle}; the cache gets k_rot and v."""
    D = 16
    cos_sin = yarn_cos_sin_cache(D, 50, theta=500.0, factor=4.0, original_max_pos=32, beta_fast=8, beta_slow=1)
    q, k, v, positions, slots, cache = _inputs(3, 2, 1, D, torch.float32, block_size=2)
    q_rot, k_rot = rope_and_write_kv_ref(q, k, v, positions % 50, cos_sin, cache, slots)
    cos, sin = cos_sin[positions % 50].chunk(2, dim=-1)
    rotation = torch.complex(cos, sin)[:, None, :]
    for x, x_rot in ((q, q_rot), (k, k_rot)):
        expected = torch.complex(*x.chunk(2, dim=-1)) * rotation
        torch.testing.assert_close(x_rot, torch.cat([expected.real, expected.imag], -1), atol=1e-6, rtol=1e-6)
    expected_cache = torch.zeros_like(cache)
    write_kv_ref(expected_cache, k_rot, v, slots)
    torch.testing.assert_close(cache, expected_cache, atol=0, rtol=0)
