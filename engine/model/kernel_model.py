"""The fast path: the reference model with its hot paths swapped for the kernels in engine.kernels.

Same config, weights loader, embedding and cache protocol as `reference.py`; the MoE keeps its experts packed in
MXFP4 (never a dense copy) and runs `router_topk` + `moe_mxfp4`, the norms run the fused `rms_norm`, and the
linear layers (attention projections, router, unembedding) `kernels.linear`. Attention already goes through the paged cache, whose ops dispatch to Triton on CUDA. Each op runs its
Triton kernel on CUDA (or anywhere with GPTOSS_FORCE_TRITON=1) and its torch ref otherwise.
"""

import torch
from torch import nn

from engine import kernels
from engine.model.config import GptOssConfig
from engine.model.reference import RMSNorm, Transformer


class KernelLinear(nn.Linear):
    """nn.Linear through kernels.linear (on CPU, bf16: the native kernel for a few tokens; for more, with `pack` set,
    oneDNN on a packed copy of the weight if it is small enough, made at the first such call)."""

    pack = False  # the unembedding's: one GEMM of every sampled row per step, where the copy pays for its memory
    packed: tuple[int, torch.Tensor | None] | None = None  # (the weight's data_ptr it was made from, the copy)

    def forward(self, x):
        if self.pack and x.dim() == 2 and kernels.packed_serves(x.shape[0], self.out_features) and (
                self.packed is None or self.packed[0] != self.weight.data_ptr()):
            self.packed = self.weight.data_ptr(), kernels.pack_linear(self.weight)
        return kernels.linear(x, self.weight, self.bias, self.packed[1] if self.packed else None)


    def greedy(self, x: torch.Tensor) -> torch.Tensor | None:
        """argmax(self(x), -1) without the [rows, out] result (kernels.greedy_tokens: the unembedding and a plain
        greedy batch's sampler in one pass over the weight), or None where no such kernel runs."""
        return kernels.greedy_tokens(x, self.weight) if self.bias is None else None


def kernel_linear(linear: nn.Linear) -> KernelLinear:
    """A KernelLinear of `linear`'s shape (built on the current device: meta while a model is assembled)."""
    return KernelLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)


class KernelMoE(nn.Module):
    """Router top-k + MoE over packed MXFP4 experts (E experts, D hidden, I intermediate)."""

    def __init__(self, config: GptOssConfig):
        super().__init__()
        E, D, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.top_k, self.limit = config.experts_per_token, config.swiglu_limit
        self.router = KernelLinear(D, E)
        self.add_packed_experts(E, D, I)

    def add_packed_experts(self, E: int, D: int, I: int) -> None:  # noqa: E741 - the spec's name
        """E experts' MXFP4 blocks and scales (uint8 buffers) and biases, shaped as the checkpoint holds them."""
        u8 = dict(dtype=torch.uint8)
        self.register_buffer("w1_blocks", torch.empty(E, 2 * I, D // 32, 16, **u8))
        self.register_buffer("w1_scales", torch.empty(E, 2 * I, D // 32, **u8))
        self.b1 = nn.Parameter(torch.empty(E, 2 * I))
        self.register_buffer("w2_blocks", torch.empty(E, D, I // 32, 16, **u8))
        self.register_buffer("w2_scales", torch.empty(E, D, I // 32, **u8))
        self.b2 = nn.Parameter(torch.empty(E, D))

    def forward(self, x):
        ids, weights = kernels.router_topk(self.router(x), self.top_k)
        return kernels.moe_mxfp4(x, ids, weights, self.w1_blocks, self.w1_scales, self.b1, self.w2_blocks,
                                 self.w2_scales, self.b2, swiglu_limit=self.limit)


class KernelRMSNorm(RMSNorm):
    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)[0]


def build_kernel_model(config: GptOssConfig, weights: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer whose MoE layers and norms run the kernels; `weights` must hold packed experts."""
    with torch.device("meta"):
        model = use_kernels(Transformer(config))
    return Transformer.load(model, weights)


def use_kernels(model: Transformer) -> Transformer:
    """Swap the MoE layers, norms and linear layers of a (meta) model for their kernel versions, in place."""
    config = model.config
    projections = [getattr(block.attn, name) for block in model.layers for name in ("q", "k", "v", "o")]
    pack = sum(p.in_features * p.out_features * 2 for p in projections) <= kernels.PACKED_PROJECTIONS_BYTES
    for block in model.layers:
        for name in ("q", "k", "v", "o"):
            setattr(block.attn, name, kernel_linear(getattr(block.attn, name)))
            getattr(block.attn, name).pack = pack
        block.attn.rotate = kernels.rotate
        block.mlp = KernelMoE(config)
        block.attn_norm = KernelRMSNorm(config.hidden_size, config.rms_norm_eps)
        block.mlp_norm = KernelRMSNorm(config.hidden_size, config.rms_norm_eps)
    model.norm = KernelRMSNorm(config.hidden_size, config.rms_norm_eps)
    model.unembed = kernel_linear(model.unembed)
    model.unembed.pack = True
    return model
