"""Compute kernels of the gpt-oss forward pass, each a Triton kernel with a torch `*_ref` twin.

Layout: engine.kernels.<module>.<op> is the Triton kernel, <op>_ref its oracle (same signature), and the
function of the same name here dispatches between them with `use_triton(device)`:

    moe_mxfp4          MoE on MXFP4 experts (moe.py)          rms_norm           residual add + RMSNorm (norm.py)
    paged_attention    paged attention, sinks (attention.py)  rope_and_write_kv  YaRN RoPE + KV write (rope.py)
    write_kv           KV-cache write (attention.py)          router_topk        top-k + softmax (router.py)

`yarn_cos_sin_cache` is plain torch. `linear` is F.linear except on CPU for a few tokens of bf16, where the native
kernel of cpu_native.c reads the weights faster than torch's GEMM does; `argmax` is torch's over the last dimension
except on CPU, where the native one is about 7x faster (the sampler's greedy rows over the 201k vocabulary). Off the Triton path, paged attention runs `paged_attention_cpu` (the ref's
math, batched over sequences) rather than the ref's per-sequence loop, and the MoE `moe_cpu.moe_mxfp4_cpu` (experts
decoded a tile at a time into the activations' dtype, tokens grouped by expert) rather than the ref's fp32 one. Kernels take tensors and ints only and know
nothing of requests. Each Triton op is `plan_<op>` (its outputs and the `Launch`es that fill them, decided from shapes
alone: launch.py) then a run of those launches; bench.kernel_resources and bench.gpu read the same plans.
"""

import functools
import os

import torch
import torch.nn.functional as F

from . import attention, cpu_native, moe, moe_cpu, norm, rope, router
from ._triton import HAS_TRITON
from .rope import yarn_cos_sin_cache

__all__ = [
    "use_triton",
    "argmax",
    "greedy_tokens",
    "linear",
    "rotate",
    "pack_linear",
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


def _dispatch(module, name: str, off_triton: str | None = None, off_module=None):
    """The op `name` of `module`: its Triton kernel when use_triton(<first argument's device>), else `off_triton`
    of `off_module` (default `name`_ref of `module`, the oracle). All are looked up at call time, so a test can
    swap any of them."""
    ref = getattr(module, name + "_ref")
    fallback, fallback_module = off_triton or name + "_ref", off_module or module

    @functools.wraps(ref)
    def op(*args, **kwargs):
        if use_triton(args[0].device):
            return getattr(module, name)(*args, **kwargs)
        return getattr(fallback_module, fallback)(*args, **kwargs)

    op.__name__ = op.__qualname__ = name
    op.__module__ = __name__
    op.__doc__ = (f"Dispatches to {module.__name__}.{name} (Triton) or {fallback_module.__name__}.{fallback} "
                  f"(torch).\n\n{ref.__doc__}")
    return op


moe_mxfp4 = _dispatch(moe, "moe_mxfp4", "moe_mxfp4_cpu", moe_cpu)
paged_attention = _dispatch(attention, "paged_attention", "paged_attention_cpu")
write_kv = _dispatch(attention, "write_kv", "write_kv_cpu")
rms_norm = _dispatch(norm, "rms_norm", "rms_norm_cpu")
rope_and_write_kv = _dispatch(rope, "rope_and_write_kv")
router_topk = _dispatch(router, "router_topk")


LINEAR_MAX_TOKENS = 4  # up to this many rows, bf16 on CPU: the native kernel (one pass over W per 4 rows; 1.1-1.9x
#                        torch's at gpt-oss-20b's shapes for 1-4 rows on AVX512-BF16, slower than its GEMM beyond)
DP_LINEAR_MAX_TOKENS = 64  # ... on AVX512-BF16 without AMX up to this many (to 8 rows the same kernel, from 9 its
#                            vdpbf16ps blocks: 16 rows' sums of one weight row at a time, as greedy_tokens'), or up
#                            to DP_LINEAR_MAX_PRODUCT rows x outputs (the router). Against oneDNN's packed GEMM (Zen 4
#                            VM, 2 threads, 2026-12-03): the larger checkpoint's [1024, 1024] q and o 1.0-2.1x at 8-64
#                            rows, [256, 1024] k and v 1.3-4.3x, [8, 1024] router 5-14x (bf16mv, up to 4096 rows);
#                            gpt-oss-20b's [4096, 2880] q 1.0-1.15x, [512, 2880] k and v 1.2-1.5x at 8-32 (0.6x at
#                            64: noise or not), [32, 2880] router 1.5-4.8x to 128 rows, 0.6x from 256
DP_LINEAR_MAX_PRODUCT = 4096


F32_NATIVE_MAX_TOKENS = 256  # up to this many rows, fp32 on an AVX2-only CPU: the native kernel (from 8 rows its
#                              transposed panels: 62-70 GFLOP/s at 64-256 rows of a [2048, 1024] projection against
#                              MKL's sgemm 44-56, even at 512, 0.8x at 2048; below 8 rows 1.7-4x MKL on the
#                              unembeddings; AMD EPYC Zen 1 VM, 2 threads, 2026-12-02)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias); on CPU with bf16 x and weight, the rows native_serves go through the native kernel
    (cpu_native.linear_bf16: fp32 sums, as torch's bf16 GEMM) where it built (any number of rows where oneDNN has no
    bf16 on this CPU: 41-52 GFLOP/s on an AVX2-only EPYC, torch's bf16 GEMM 3-5), and more rows through oneDNN with
    `packed` (pack_linear's copy of weight) when there is one. fp32 on an AVX2-only CPU: up to
    F32_NATIVE_MAX_TOKENS rows the native kernel (cpu_native.linear_f32), then the bias added."""
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.bfloat16 and x.numel() > 0:
        rows = x.numel() // x.shape[-1]
        if packed is not None and x.dim() == 2 and packed_serves(rows, weight.shape[0]):
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        if (native_serves(rows, weight.shape[0]) or not onednn_bf16()) and weight.is_contiguous():
            lib = cpu_native.library()
            if lib is not None:
                return cpu_native.linear_bf16(lib, x, weight, bias)
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and weight.is_contiguous() and \
            0 < x.numel() <= F32_NATIVE_MAX_TOKENS * x.shape[-1]:
        lib = cpu_native.library()  # elsewhere than AVX2 nothing is allocated or reshaped: MKL's GEMM as before
        out = cpu_native.linear_f32(lib, x.reshape(-1, x.shape[-1]).contiguous(), weight) \
            if lib is not None and cpu_native.f32_linear_runs(lib) else None
        if out is not None:
            if bias is not None:
                out += bias
            return out.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def native_serves(rows: int, outputs: int) -> bool:
    """Whether `linear` takes the native kernel for `rows` rows of bf16 x times a weight of `outputs` rows where oneDNN
    has bf16: up to LINEAR_MAX_TOKENS rows, on AVX512-BF16 without AMX up to DP_LINEAR_MAX_TOKENS or
    DP_LINEAR_MAX_PRODUCT rows x outputs."""
    if rows <= LINEAR_MAX_TOKENS:
        return True
    lib = cpu_native.library()
    return lib is not None and lib.gptoss_mxfp4_isa() == 3 and (rows <= DP_LINEAR_MAX_TOKENS or
                                                               rows * outputs <= DP_LINEAR_MAX_PRODUCT)


def packed_serves(rows: int, outputs: int) -> bool:
    """Whether `linear` takes a packed copy of a weight of `outputs` rows (one there is) for `rows` rows: where the
    native kernel does not (native_serves: up to LINEAR_MAX_TOKENS rows it reads the weight faster than oneDNN's
    packed GEMM, even a big one: the larger checkpoint's 412 MB unembedding 12.8-14.0 against 14.5-16.8 ms at 1 row,
    13.2-14.6 against 14.1-15.7 at 4; AMD EPYC Zen 4 VM, 2 threads, 2026-12-03)."""
    return not native_serves(rows, outputs)


PACK_MAX_BYTES = 512 << 20  # bf16 weights up to this size may get a oneDNN-packed second copy for GEMMs of more
#                             than LINEAR_MAX_TOKENS rows (1.3-1.7x F.linear's speed at 16-64 rows on the small
#                             checkpoint's unembedding, 1.15-1.3x at 8-32 rows on the larger one's: oneDNN otherwise
#                             reorders the weight on every call); bigger ones are not worth their memory twice
#                             (gpt-oss-20b's unembedding: 1.1 GiB, within 1.04-1.17x). The kernel model packs its
#                             unembedding, and its attention projections where they fit PACKED_PROJECTIONS_BYTES
PACKED_PROJECTIONS_BYTES = 256 << 20  # all the attention projections' packed copies together at most this big:
#                                       1.1-1.9x F.linear at 8-64 rows (decode) on a Zen 4 VM at gpt-oss-20b's and the
#                                       larger test checkpoint's shapes, ~1x at prefill sizes (2026-12-03; 0.84-1.4x on
#                                       the Xeon), but gpt-oss-20b's would be 1.27 GiB more on a 16 GiB machine: not
#                                       packed


def pack_linear(weight: torch.Tensor) -> torch.Tensor | None:
    """A oneDNN-packed copy of a CPU bf16 weight of at most PACK_MAX_BYTES for `linear`, or None (another device or
    dtype, too big, or a torch without mkldnn)."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or weight.numel() * 2 > PACK_MAX_BYTES:
        return None
    if not onednn_bf16():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 64)


@functools.cache
def onednn_bf16() -> bool:
    """Whether oneDNN computes in bf16 on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT): without it its bf16 reorder
    raises ("bf16 path needs the cpu support ...") and torch's bf16 GEMM falls back to a slow path (an AVX2-only
    EPYC: 4.7 GFLOP/s against 22 in fp32 at 256 rows)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE, x [T, heads, D] with cos, sin [T, D/2] fp32 (reference.rotate); on CPU for contiguous fp32 or
    bf16 x the native kernel (cpu_native.rotate: the same bits, one call instead of torch's seven ops)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous() and x.numel() and \
            cos.dtype == sin.dtype == torch.float32 and cos.is_contiguous() and sin.is_contiguous():
        lib = cpu_native.library()
        if lib is not None:
            return cpu_native.rotate(lib, x, cos, sin)
    return rope._rotate_ref(x, cos, sin)


def greedy_tokens(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """argmax(linear(x, weight), -1) for x [n, K] and weight [V, K] without the logits: on an AMX CPU bf16 (the
    weight's tiles times the rows, each logit rounded to bf16 and compared in vocabulary order), on AVX512-BF16 bf16
    from 12 rows where K <= 128, from 2 rows beyond (vdpbf16ps, 16 rows' sums of one vocabulary row at a time, or up
    to 8 rows' with 2-8 pairs of each, the weight's next rows prefetched: 1.15-1.5x oneDNN's GEMM and the argmax at
    4-64 rows of the larger checkpoint, 1.4-2.1x where the logits cost as much as the sums); on an AVX2-only CPU
    bf16 or fp32 from 8 rows where `linear` itself takes the native panels (bf16 without oneDNN's bf16; fp32 up to
    F32_NATIVE_MAX_TOKENS rows): the same logits, compared as they are made (cpu_native.greedy_tokens). None where
    neither runs (the caller makes the logits)."""
    if x.device.type != "cpu" or x.dim() != 2 or x.dtype != weight.dtype or not weight.is_contiguous() or \
            x.dtype not in (torch.bfloat16, torch.float32):
        return None
    lib = cpu_native.library()
    if lib is None:
        return None
    if lib.gptoss_mxfp4_isa() >= 3:  # AMX, or AVX512-BF16 where it pays (cpu_native.c's bgreedy_min_tokens): bf16 only
        if x.dtype != torch.bfloat16:
            return None
    elif (onednn_bf16() if x.dtype == torch.bfloat16 else x.shape[0] > F32_NATIVE_MAX_TOKENS):
        return None  # linear takes oneDNN or MKL here: their logits, not the panels'
    return cpu_native.greedy_tokens(lib, x.contiguous(), weight)


def argmax(rows: torch.Tensor) -> torch.Tensor:
    """rows [n, V] -> [n] int64, torch.argmax(rows, dim=-1); on CPU for fp32 or bf16 rows the native kernel
    (cpu_native.argmax: the same index, first of equal maxima, NaN largest) where it built."""
    if rows.device.type == "cpu" and rows.dim() == 2 and rows.dtype in (torch.float32, torch.bfloat16) and rows.numel():
        lib = cpu_native.library()
        if lib is not None:
            return cpu_native.argmax(lib, rows)
    return rows.argmax(dim=-1)
