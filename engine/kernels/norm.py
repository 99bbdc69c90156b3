"""Fused residual add + RMSNorm: the pre-norm step of every gpt-oss block.

    new_residual = x + residual          (rounded to x's dtype, as the unfused model would store it)
    out          = new_residual * rsqrt(mean(new_residual^2) + eps) * weight     (fp32, cast to x's dtype)
"""

import torch

from . import cpu_native
from ._triton import next_pow2, tl, triton
from .launch import Launch, run


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [T, H]; weight: [H]  ->  (out [T, H], new_residual [T, H]), both in x's dtype."""
    new_residual = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    h = new_residual.float()
    out = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype), new_residual


def rms_norm_cpu(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm_ref off Triton: without a residual, a contiguous 2-d bf16 x goes through the native kernel (one call
    instead of torch's eight ops: cpu_native.rms_norm) where it built. Its sum of squares runs in another order, which
    the bf16 result hides; an fp32 x keeps the ref, so an fp32 model's kernel path stays the reference's bits."""
    if residual is None and x.device.type == "cpu" and x.dim() == 2 and x.is_contiguous() and weight.is_contiguous() \
            and x.dtype == torch.bfloat16 and weight.dtype in (torch.float32, torch.bfloat16):
        lib = cpu_native.library()
        if lib is not None:
            return cpu_native.rms_norm(lib, x, weight, eps), x
    return rms_norm_ref(x, weight, eps, residual)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr,  # x, res, out, new_res: [T, H] row-major; w: [H]
    H, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    h = tl.load(x_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(res_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
        h = h.to(new_res_ptr.dtype.element_ty)
        tl.store(new_res_ptr + row * H + cols, h, mask=mask)
        h = h.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * H + cols, (h * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)


def plan_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], list[Launch]]:
    """(out, new_residual) of `rms_norm` and the launch that fills them: one program per row of x [T, H]."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    T, H = x2.shape
    out = torch.empty_like(x2)
    if residual is None:
        new_res, res2 = x, x2
    else:
        res2 = residual.reshape(T, H).contiguous()
        new_res = torch.empty_like(x2)
    launches = []
    if T > 0:
        launches.append(Launch(_rms_norm_kernel, (T,), (
            x2, res2, weight.contiguous(), out, new_res if residual is not None else out, H, eps,
        ), dict(HAS_RESIDUAL=residual is not None, BLOCK_H=next_pow2(H), num_warps=4 if H <= 4096 else 8)))
    return (out.reshape(shape), new_res.reshape(shape)), launches


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `rms_norm_ref`: one program per row of x [T, H]."""
    result, launches = plan_rms_norm(x, weight, eps, residual)
    run(launches)
    return result
