"""moe_mxfp4_cpu (the CPU path: tokens grouped by expert, experts through the native kernels of cpu_native.c, every
instruction set this CPU has, or through torch without them) against moe_mxfp4_ref."""

import pytest
import torch

from engine.kernels import cpu_native, moe_cpu
from engine.kernels.moe import moe_mxfp4_ref
from engine.kernels.moe_cpu import moe_mxfp4_cpu

from ._util import DTYPES, assert_close
from .test_moe import CASES, _args


@pytest.mark.parametrize("tokens_fused", [32, 0])  # the fused decode-and-dot up to 32 tokens; always tiles
@pytest.mark.parametrize("tile_bytes", [1 << 18, 48])  # one tile per matrix; many tiles (2-3 rows each)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_moe_mxfp4_cpu_matches_ref(case, dtype, tile_bytes, tokens_fused, monkeypatch):
    """Computing in x's dtype: fp32 equal to the ref's fp32 math up to summation order, bf16 within bf16 rounding
    of it. Tokens with every expert on another rank (-1) get exactly zero."""
    monkeypatch.setattr(moe_cpu, "TILE_BYTES", tile_bytes)
    monkeypatch.setattr(moe_cpu, "MATVEC_MAX_TOKENS", tokens_fused)
    args = _args(case, dtype, "cpu")
    out = moe_mxfp4_cpu(*args)
    assert_close(out, moe_mxfp4_ref(*args), fp32_tol=1e-5)
    if (args[1] == -1).all(dim=1).any():
        assert (out[(args[1] == -1).all(dim=1)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["one-token", "skewed-multi-tile", "other-rank"])
def test_every_native_isa_and_torch_match_ref(case, dtype, request, monkeypatch):
    """The scalar, AVX2, AVX-512, AVX512-BF16 and AMX kernels (each this CPU has) and the torch decode without them,
    both paths."""
    args = _args(case, dtype, "cpu")
    ref = moe_mxfp4_ref(*args)
    for tokens_fused in (32, 0):
        monkeypatch.setattr(moe_cpu, "MATVEC_MAX_TOKENS", tokens_fused)
        for level in cpu_native.ISA_NAMES:
            lib = cpu_native.library()
            if lib.gptoss_mxfp4_set_isa(level) < 0:
                continue
            try:
                assert_close(moe_mxfp4_cpu(*args), ref, fp32_tol=1e-5)
            finally:
                lib.gptoss_mxfp4_set_isa(-1)
    monkeypatch.setattr(cpu_native, "library", lambda: None)
    assert_close(moe_mxfp4_cpu(*args), ref, fp32_tol=1e-5)


def test_moe_mxfp4_cpu_custom_limit_and_alpha():
    args = _args("odd-T", torch.float32, "cpu")
    torch.testing.assert_close(moe_mxfp4_cpu(*args, swiglu_limit=1.5, alpha=0.5),
                               moe_mxfp4_ref(*args, swiglu_limit=1.5, alpha=0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_prefill_sized_batch_in_one_native_call(dtype, monkeypatch):
    """Where the native kernels decode the weights once for x's dtype (AMX, AVX512-BF16 for bf16; AVX2's fp32 panels
    for either) every batch goes through the one native call, an expert's tokens 512 at a time (here ~600 an expert:
    two passes); elsewhere the per-expert path past 32 tokens. Both the ref's result."""
    from .test_moe import _experts

    g = torch.Generator().manual_seed(5)
    T, E, K, H, I = 1200, 4, 2, 64, 32
    x = torch.randn(T, H, generator=g).to(dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    weights = torch.softmax(torch.randn(T, K, generator=g), -1)
    args = (x, ids, weights, *_experts(E, H, I))
    calls = []
    moe = cpu_native.moe
    monkeypatch.setattr(cpu_native, "moe", lambda *a: calls.append(1) or moe(*a))
    assert_close(moe_mxfp4_cpu(*args), moe_mxfp4_ref(*args), fp32_tol=1e-5)
    assert calls == ([1] if cpu_native.decodes_once(cpu_native.library(), dtype) else [])


@pytest.mark.parametrize("dtype", DTYPES)
def test_avx2_moe_batch_invariant(dtype):
    """On the AVX2 level every expert matrix goes through the fp32 panels at any token count (each sum in k's order,
    each token's sums its own) and the per-token steps are the token's alone, so a token's MoE output is the same bits
    whichever tokens share the step: here alone, in a pair, and among 40 (experts with 1 to 20 tokens)."""
    from .test_moe import _experts

    lib = cpu_native.library()
    if lib.gptoss_mxfp4_set_isa(1) < 0:
        pytest.skip("this CPU has no AVX2")
    try:
        g = torch.Generator().manual_seed(9)
        T, E, K, H, I = 40, 8, 4, 64, 32
        x = torch.randn(T, H, generator=g).to(dtype)
        ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
        weights = torch.softmax(torch.randn(T, K, generator=g), -1)
        experts = _experts(E, H, I)
        every = cpu_native.moe(lib, x, ids, weights, *experts, 7.0, 1.702)
        for rows in ([0], [T - 1], [3, 17]):
            alone = cpu_native.moe(lib, x[rows], ids[rows], weights[rows], *experts, 7.0, 1.702)
            assert torch.equal(alone, every[rows])
    finally:
        lib.gptoss_mxfp4_set_isa(-1)
