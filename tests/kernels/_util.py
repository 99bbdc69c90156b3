"""Shared helpers for the kernel tests: device choice, the skip mark for the Triton path, tolerances, weights."""

import pytest
import torch

from engine.kernels._triton import HAS_TRITON, INTERPRET
from engine.weights.mxfp4 import quantize_mxfp4

# Compiled kernels need CUDA; on CPU they run only under the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
triton_path = pytest.mark.skipif(
    not HAS_TRITON or (DEVICE == "cpu" and not INTERPRET),
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1 set before triton is imported (run tests/kernels alone)",
)
DTYPES = [torch.float32, torch.bfloat16]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, fp32_tol: float = 1e-5) -> None:
    """fp32: absolute and relative fp32_tol. bf16: 1e-2 relative, plus 1e-2 of the largest magnitude absolute
    (the interpreter truncates fp32 -> bf16 where a GPU rounds, so one bf16 ulp apart is expected)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if expected.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=fp32_tol, rtol=fp32_tol)
    else:
        scale = expected.float().abs().max().item()
        torch.testing.assert_close(actual.float(), expected.float(), atol=1e-2 * max(scale, 1e-6), rtol=1e-2)


def mxfp4_weights(*shape: int, std: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights [*shape] quantized to MXFP4  ->  (blocks [..., K/32, 16], scales [..., K/32])."""
    return quantize_mxfp4(torch.randn(*shape, generator=generator) * std)
