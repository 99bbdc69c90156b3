"""Small gpt-oss checkpoints in the exact real format: `gptoss make-tiny-model DIR`.

Random bf16 weights (deterministic for a seed), experts quantized to MXFP4 by our own quantizer, written as
config.json + generation_config.json + safetensors with the real tensor names, in the HF or the original layout.
The default keeps the real vocabulary (201088) so the real tokenizer and harmony format work with it.
"""

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model.config import FULL, SLIDING, GptOssConfig
from engine.weights.checkpoint import PACKED, expected_tensors, source_name
from engine.weights.mxfp4 import quantize_mxfp4


@dataclass
class TinyModelSpec:
    seed: int = 0
    layers: int = 2
    experts: int = 4
    experts_per_token: int = 2
    hidden: int = 64
    intermediate: int | None = None  # defaults to hidden, as in the real models
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 16
    sliding_window: int = 16
    vocab: int = 201088
    format: str = "hf"  # "hf" or "original"
    max_shard_bytes: int | None = None  # split into shards with an index above this size (HF layout)

    def config(self) -> GptOssConfig:
        return GptOssConfig(
            num_hidden_layers=self.layers, num_experts=self.experts, experts_per_token=self.experts_per_token,
            hidden_size=self.hidden, intermediate_size=self.intermediate or self.hidden,
            num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
            vocab_size=self.vocab, sliding_window=self.sliding_window,
            layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.layers)), layout=self.format,
            **self._special_ids(),
        )

    def _special_ids(self) -> dict:
        """The real eos/pad ids when the vocabulary holds them; the last ids of a smaller vocabulary otherwise."""
        if self.vocab > 200012:
            return {}
        return {"eos_token_ids": (self.vocab - 1,), "pad_token_id": self.vocab - 2}


def _init_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a weight: norms near 1, biases small, matrices scaled by 1/sqrt(fan_in)."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if name.endswith("sinks"):
        return 0.0, 1.0
    if name.endswith(("bias", ".b1", ".b2")):
        return 0.0, 0.05
    if name == "embed.weight":
        return 0.0, 1.0
    return 0.0, 1.0 / math.sqrt(shape[-1])


def random_weights(config: GptOssConfig, seed: int) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor: bf16 floats, MXFP4 blocks/scales for the experts (in the order of the config)."""
    gen = torch.Generator().manual_seed(seed)
    specs = expected_tensors(config)
    weights = {}
    for name, spec in specs.items():
        if spec.kind == PACKED:
            if name.endswith("_blocks"):
                E, rows, groups, _ = spec.shape
                dense = torch.randn(E, rows, groups * 32, generator=gen) / math.sqrt(groups * 32)
                blocks, scales = quantize_mxfp4(dense.to(torch.bfloat16))
                weights[name], weights[name.replace("_blocks", "_scales")] = blocks, scales
            continue
        mean, std = _init_std(name, spec.shape)
        weights[name] = (torch.randn(spec.shape, generator=gen) * std + mean).to(torch.bfloat16)
    return weights


def to_layout(weights: dict[str, torch.Tensor], config: GptOssConfig) -> dict[str, torch.Tensor]:
    """Rename canonical tensors to the checkpoint names of `config.layout` (original: q, k, v -> one qkv)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor]] = {}
    for name, tensor in weights.items():
        target, rows = source_name(name, config)
        if rows is None:
            out[target] = tensor
        else:
            fused.setdefault(target, []).append(tensor)  # q, k, v arrive in that order
    out.update({name: torch.cat(parts) for name, parts in fused.items()})
    return out


def write_checkpoint(directory: str | Path, config: GptOssConfig, weights: dict[str, torch.Tensor],
                     max_shard_bytes: int | None = None) -> Path:
    """Write config files and safetensors (sharded with an index past `max_shard_bytes`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = to_layout(weights, config)
    as_dict = config.to_hf_dict() if config.layout == "hf" else config.to_original_dict()
    (directory / "config.json").write_text(json.dumps(as_dict, indent=2) + "\n")
    generation = {"bos_token_id": 199998, "eos_token_id": list(config.eos_token_ids),
                  "pad_token_id": config.pad_token_id, "do_sample": True}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shards = _split(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], directory / "model.safetensors", {"format": "pt"})
        return directory
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / file, {"format": "pt"})
        weight_map.update({name: file for name in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory


def _split(tensors: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if max_bytes and current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    return shards + [current]


def make_tiny_model(directory: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Generate a checkpoint into `directory` and return it."""
    spec = spec or TinyModelSpec()
    if spec.format not in ("hf", "original"):
        raise ValueError(f"format must be 'hf' or 'original', got {spec.format!r}")
    config = spec.config()
    return write_checkpoint(directory, config, random_weights(config, spec.seed), spec.max_shard_bytes)


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("make-tiny-model", help="write a small random gpt-oss checkpoint in the real format")
    parser.add_argument("dir", help="output directory")
    defaults = TinyModelSpec()
    for flag, field in (("--seed", "seed"), ("--layers", "layers"), ("--experts", "experts"),
                        ("--experts-per-token", "experts_per_token"), ("--hidden", "hidden"),
                        ("--intermediate", "intermediate"), ("--heads", "heads"), ("--kv-heads", "kv_heads"),
                        ("--head-dim", "head_dim"), ("--sliding-window", "sliding_window"), ("--vocab", "vocab"),
                        ("--max-shard-bytes", "max_shard_bytes")):
        parser.add_argument(flag, dest=field, type=int, default=getattr(defaults, field),
                            help=f"default {getattr(defaults, field)}")
    parser.add_argument("--format", choices=["hf", "original"], default="hf")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    fields = {f: getattr(args, f) for f in TinyModelSpec.__dataclass_fields__}
    path = make_tiny_model(args.dir, TinyModelSpec(**fields))
    print(f"wrote {path}")
    return 0
