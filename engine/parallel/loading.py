"""Sharded loading: each rank copies only its slices out of the memory-mapped safetensors.

`Checkpoint.read` gives zero-copy views of the map; `shard_of` narrows each view to this rank's part (still a
view), and only that part is copied (or, for dequantized experts, decoded) into the rank's own memory. No rank
ever holds the whole checkpoint: its resident tensors are its shards plus the replicated norms and routers.
"""

import torch

from engine.model.config import GptOssConfig
from engine.parallel.tp import RankLayout, shard_of
from engine.weights.checkpoint import FLOAT, Checkpoint, expected_tensors
from engine.weights.mxfp4 import dequantize_mxfp4

CATEGORIES = ("experts", "attention", "vocab", "replicated")


def category(name: str) -> str:
    """Which part of the model a canonical tensor belongs to (for the per-rank memory report)."""
    if name in ("embed.weight", "unembed.weight"):
        return "vocab"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name and ".router." not in name:
        return "experts"
    return "replicated"  # norms and routers


def tensor_bytes(weights: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes held per category (and in total)."""
    out = dict.fromkeys(CATEGORIES, 0)
    for name, t in weights.items():
        out[category(name)] += t.numel() * t.element_size()
    out["total"] = sum(out.values())
    return out


def load_shard(model_dir, layout: RankLayout, dtype: torch.dtype = torch.bfloat16,
               device: str | torch.device = "cpu", dequantize_experts: bool = True,
               ) -> tuple[GptOssConfig, dict[str, torch.Tensor]]:
    """This rank's part of every tensor, floats cast to `dtype`, on `device` (names as in `load_weights`)."""
    ckpt = Checkpoint(model_dir)
    c = ckpt.config
    specs = expected_tensors(c)
    weights = {}
    for name, spec in specs.items():
        if dequantize_experts and name.endswith("_scales"):
            continue
        shard = shard_of(name, c, layout)
        view = shard.take(ckpt.read(name, spec))
        if dequantize_experts and name.endswith("_blocks"):
            scales = name.replace("_blocks", "_scales")
            view_scales = shard_of(scales, c, layout).take(ckpt.read(scales, specs[scales]))
            weights[name.replace("_blocks", "")] = dequantize_mxfp4(view, view_scales, dtype).to(device)
        elif shard.zero:
            weights[name] = torch.zeros(view.shape, dtype=dtype, device=device)
        else:
            weights[name] = view.to(device=device, dtype=dtype if spec.kind == FLOAT else view.dtype, copy=True)
    return c, weights
