"""rms_norm (fused residual add) against rms_norm_ref, and the ref against the textbook formula."""

import pytest
import torch

from engine.kernels.norm import rms_norm, rms_norm_ref

from ._util import DEVICE, DTYPES, assert_close, triton_path


def _inputs(T, H, dtype, with_residual):
    g = torch.Generator().manual_seed(T * 1000 + H)
    x = (torch.randn(T, H, generator=g) * 3).to(dtype).to(DEVICE)
    residual = torch.randn(T, H, generator=g).to(dtype).to(DEVICE) if with_residual else None
    weight = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype).to(DEVICE)
    return x, weight, residual


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("T,H", [(1, 64), (5, 80), (3, 2880)])
def test_rms_norm_matches_ref(T, H, dtype, with_residual):
    x, weight, residual = _inputs(T, H, dtype, with_residual)
    out, new_res = rms_norm(x, weight, 1e-5, residual)
    out_ref, new_res_ref = rms_norm_ref(x, weight, 1e-5, residual)
    assert_close(new_res, new_res_ref, fp32_tol=0)  # the add is one rounding either way
    assert_close(out, out_ref)


def test_rms_norm_ref_matches_formula():
    x, weight, residual = _inputs(4, 48, torch.float32, True)
    out, new_res = rms_norm_ref(x, weight, 1e-5, residual)
    h = (x + residual).double()
    expected = h / torch.sqrt((h**2).sum(-1, keepdim=True) / 48 + 1e-5) * weight.double()
    torch.testing.assert_close(new_res, x + residual)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    out_alone, same = rms_norm_ref(x, weight, 1e-5)
    assert same is x
