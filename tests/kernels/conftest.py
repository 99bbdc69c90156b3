"""Kernel tests run the Triton kernels on CPU through the interpreter unless told otherwise.

Both variables must be set before triton is first imported (triton.jit reads TRITON_INTERPRET when a kernel is
defined), so run `pytest tests/kernels` on its own; with TRITON_INTERPRET=0 on a CUDA machine the same tests
exercise the compiled kernels on the GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GPTOSS_FORCE_TRITON", "1")
