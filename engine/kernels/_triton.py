"""Optional Triton import shared by the kernel modules.

Triton is an optional dependency (the `kernels` extra): without it the kernel modules still import, their `@jit`
functions are inert stubs, `HAS_TRITON` is False and every op falls back to its torch `*_ref` twin.
"""

import os
import types

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only install: keep the module importable, kernels are never launched
    HAS_TRITON = False
    triton = types.SimpleNamespace(jit=lambda fn: fn, cdiv=lambda a, b: -(-a // b), next_power_of_2=None)
    tl = types.SimpleNamespace(constexpr=int)

# Under TRITON_INTERPRET=1 kernels run in numpy, where bf16 dots and bf16 arithmetic are wrong: kernels then load,
# upcast to fp32 and dot in fp32. On a GPU, bf16 inputs use bf16 tensor-core dots with fp32 accumulation.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def bf16_dots(dtype) -> bool:
    """Whether a kernel fed `dtype` activations should run its tl.dot in bf16 (GPU only)."""
    import torch

    return dtype == torch.bfloat16 and not INTERPRET


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
