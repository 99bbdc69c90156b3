"""moe_mxfp4_cpu (the CPU path: tokens grouped by expert, experts decoded tile by tile or fused into the dot
products, eager or compiled) against moe_mxfp4_ref."""

import pytest
import torch

from engine.kernels import moe_cpu
from engine.kernels.moe import moe_mxfp4_ref
from engine.kernels.moe_cpu import moe_mxfp4_cpu

from ._util import DTYPES, assert_close
from .test_moe import CASES, _args


@pytest.mark.parametrize("tile_bytes", [1 << 19, 48])  # one tile per matrix; many tiles (2-3 rows each)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_moe_mxfp4_cpu_matches_ref(case, dtype, tile_bytes, monkeypatch):
    """Computing in x's dtype: fp32 equal to the ref's fp32 math up to summation order, bf16 within bf16 rounding
    of it. Tokens with every expert on another rank (-1) get exactly zero."""
    monkeypatch.setattr(moe_cpu, "TILE_BYTES", tile_bytes)
    args = _args(case, dtype, "cpu")
    out = moe_mxfp4_cpu(*args)
    assert_close(out, moe_mxfp4_ref(*args), fp32_tol=1e-5)
    if (args[1] == -1).all(dim=1).any():
        assert (out[(args[1] == -1).all(dim=1)] == 0).all()


def test_moe_mxfp4_cpu_custom_limit_and_alpha():
    args = _args("odd-T", torch.float32, "cpu")
    torch.testing.assert_close(moe_mxfp4_cpu(*args, swiglu_limit=1.5, alpha=0.5),
                               moe_mxfp4_ref(*args, swiglu_limit=1.5, alpha=0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile builds the C++ decode (tens of seconds on a loaded machine, cached after)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["one-token", "skewed-multi-tile", "other-rank"])
def test_compiled_decode_matches_ref(case, dtype, monkeypatch):
    """The path big matrices take, forced on small ones: compiled tiles (many tokens per expert) and the compiled
    fused decode-and-dot (up to FUSED_MAX_TOKENS tokens per expert)."""
    monkeypatch.setattr(moe_cpu, "COMPILE_MIN_BYTES", 0)
    monkeypatch.setattr(moe_cpu, "TILE_BYTES", 1024)
    args = _args(case, dtype, "cpu")
    assert_close(moe_mxfp4_cpu(*args), moe_mxfp4_ref(*args), fp32_tol=1e-5)
    assert moe_cpu._COMPILED["ok"] and len(moe_cpu._COMPILED) > 1  # it did compile
