"""Compute kernels of the gpt-oss forward pass, each a Triton kernel with a torch `*_ref` twin.

Layout: engine.kernels.<module>.<op> is the Triton kernel, <op>_ref its oracle (same signature), and the
function of the same name here dispatches between them with `use_triton(device)`:

    moe_mxfp4          MoE on MXFP4 experts (moe.py)          rms_norm           residual add + RMSNorm (norm.py)
    paged_attention    paged attention, sinks (attention.py)  rope_and_write_kv  YaRN RoPE + KV write (rope.py)
    write_kv           KV-cache write (attention.py)          router_topk        top-k + softmax (router.py)

`yarn_cos_sin_cache` is plain torch. Off the Triton path, paged attention runs `paged_attention_cpu` (the ref's
math, decode rows batched) rather than the ref's per-sequence loop. Kernels take tensors and ints only and know
nothing of requests. Each Triton op is `plan_<op>` (its outputs and the `Launch`es that fill them, decided from shapes
alone: launch.py) then a run of those launches; bench.kernel_resources and bench.gpu read the same plans.
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


def _dispatch(module, name: str, off_triton: str | None = None):
    """The op `name` of `module`: its Triton kernel when use_triton(<first argument's device>), else `off_triton`
    (default `name`_ref, the oracle). All are looked up at call time, so a test can swap any of them."""
    ref = getattr(module, name + "_ref")
    fallback = off_triton or name + "_ref"

    @functools.wraps(ref)
    def op(*args, **kwargs):
        return getattr(module, name if use_triton(args[0].device) else fallback)(*args, **kwargs)

    op.__name__ = op.__qualname__ = name
    op.__module__ = __name__
    op.__doc__ = f"Dispatches to {module.__name__}.{name} (Triton) or {fallback} (torch).\n\n{ref.__doc__}"
    return op


moe_mxfp4 = _dispatch(moe, "moe_mxfp4")
paged_attention = _dispatch(attention, "paged_attention", "paged_attention_cpu")
write_kv = _dispatch(attention, "write_kv")
rms_norm = _dispatch(norm, "rms_norm")
rope_and_write_kv = _dispatch(rope, "rope_and_write_kv")
router_topk = _dispatch(router, "router_topk")
