"""Compute kernels of the gpt-oss forward pass, each a Triton kernel with a torch `*_ref` twin.

Layout: engine.kernels.<module>.<op> is the Triton kernel, <op>_ref its oracle (same signature), and the
function of the same name here dispatches between them with `use_triton(device)`:

    moe_mxfp4          MoE on MXFP4 experts (moe.py)          rms_norm           residual add + RMSNorm (norm.py)
    paged_attention    paged attention, sinks (attention.py)  rope_and_write_kv  YaRN RoPE + KV write (rope.py)
    write_kv           KV-cache write (attention.py)          router_topk        top-k + softmax (router.py)

`yarn_cos_sin_cache` is plain torch. Kernels take tensors and ints only and know nothing of requests.
"""

import functools
import os

import torch

from . import attention, moe, norm, rope, router
from ._triton import HAS_TRITON
from .rope import yarn_cos_sin_cache

__all__ = [
    "use_triton",
    "moe_mxfp4",
    "paged_attention",
    "write_kv",
    "rms_norm",
    "rope_and_write_kv",
    "router_topk",
    "yarn_cos_sin_cache",
]


def use_triton(device: torch.device | str) -> bool:
    """True on CUDA when triton imports; on other devices only with GPTOSS_FORCE_TRITON=1 (tests set it together
    with TRITON_INTERPRET=1 to run the Triton kernels on CPU)."""
    if not HAS_TRITON:
        return False
    if torch.device(device).type == "cuda":
        return True
    return os.environ.get("GPTOSS_FORCE_TRITON", "0") == "1"


def _dispatch(kernel, ref, device_arg: int = 0):
    """An op that runs `kernel` when use_triton(<its first tensor's device>) and `ref` otherwise."""

    @functools.wraps(ref)
    def op(*args, **kwargs):
        return (kernel if use_triton(args[device_arg].device) else ref)(*args, **kwargs)

    op.__name__ = op.__qualname__ = kernel.__name__
    return op


moe_mxfp4 = _dispatch(moe.moe_mxfp4, moe.moe_mxfp4_ref)
paged_attention = _dispatch(attention.paged_attention, attention.paged_attention_ref)
write_kv = _dispatch(attention.write_kv, attention.write_kv_ref)
rms_norm = _dispatch(norm.rms_norm, norm.rms_norm_ref)
rope_and_write_kv = _dispatch(rope.rope_and_write_kv, rope.rope_and_write_kv_ref)
router_topk = _dispatch(router.router_topk, router.router_topk_ref)
