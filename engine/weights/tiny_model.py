"""Small gpt-oss checkpoints in the exact real format: `gptoss make-tiny-model DIR`.

Random bf16 weights (deterministic for a seed), experts quantized to MXFP4 by our own quantizer, written as
config.json + generation_config.json + safetensors with the real tensor names, in the HF or the original layout.
The default keeps the real vocabulary (201088) so the real tokenizer and harmony format work with it.

Full size: `gptoss make-tiny-model DIR --like gpt-oss-20b` takes the real model's shapes, draws the experts' MXFP4
codes and scales directly (quantizing 20 billion bf16 values would take an hour here) and writes shards as it goes,
one layer in memory at a time, so making the 13 GB checkpoint needs about one shard of RAM.
"""

import argparse
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model.config import FULL, SLIDING, GptOssConfig
from engine.weights.checkpoint import LAYER_NAME, PACKED, Spec, expected_tensors, source_name
from engine.weights.mxfp4 import BLOCK_SIZE, FP4_VALUES, SCALE_BIAS, quantize_mxfp4


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
    random_mxfp4: bool = False  # draw the experts' MXFP4 codes and scales directly instead of quantizing bf16
    #                             weights (same scale of values; fast enough for the real models' sizes)

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


# The real models' shapes (GPT_OSS_SPEC.md), for `--like`: the flags given next to it still override these.
SHAPES = {
    "gpt-oss-20b": dict(layers=24, experts=32, experts_per_token=4, hidden=2880, intermediate=2880, heads=64,
                        kv_heads=8, head_dim=64, sliding_window=128, vocab=201088),
    "gpt-oss-120b": dict(layers=36, experts=128, experts_per_token=4, hidden=2880, intermediate=2880, heads=64,
                         kv_heads=8, head_dim=64, sliding_window=128, vocab=201088),
}
FULL_SIZE = dict(random_mxfp4=True, max_shard_bytes=4 << 30)  # what `--like` sets besides the shapes


def random_weights(config: GptOssConfig, seed: int, random_mxfp4: bool = False) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor: bf16 floats, MXFP4 blocks/scales for the experts (in the order of the config)."""
    return {name: t for part in random_parts(config, seed, random_mxfp4) for name, t in part.items()}


def random_parts(config: GptOssConfig, seed: int, random_mxfp4: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """`random_weights` a part at a time: the global tensors, then each layer's (the same values for a seed)."""
    gen = torch.Generator().manual_seed(seed)
    part, part_layer = {}, None
    for name, spec in expected_tensors(config).items():
        layer = (LAYER_NAME.match(name) or [None, None])[1]
        if part and layer != part_layer:
            yield part
            part = {}
        part_layer = layer
        if spec.kind != PACKED:
            mean, std = _init_std(name, spec.shape)
            part[name] = (torch.randn(spec.shape, generator=gen) * std + mean).to(torch.bfloat16)
        elif name.endswith("_blocks"):
            blocks, scales = (_random_mxfp4 if random_mxfp4 else _quantized_mxfp4)(spec, gen)
            part[name], part[name.replace("_blocks", "_scales")] = blocks, scales
    yield part


def _quantized_mxfp4(spec: Spec, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal weights of std 1/sqrt(fan_in), quantized to MXFP4 [E, rows, G, 16] + [E, rows, G]."""
    E, rows, groups, _ = spec.shape
    dense = torch.randn(E, rows, groups * BLOCK_SIZE, generator=gen) / math.sqrt(groups * BLOCK_SIZE)
    return quantize_mxfp4(dense.to(torch.bfloat16))


# root mean square of an E2M1 value drawn uniformly from its 16 codes
_FP4_RMS = math.sqrt(sum(v * v for v in FP4_VALUES) / len(FP4_VALUES))


def _random_mxfp4(spec: Spec, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random codes, and scales of 2**e (e one of three around the value that gives weights of rms about
    1/sqrt(fan_in), as `_quantized_mxfp4`'s): no float tensor of the full size is ever made."""
    E, rows, groups, _ = spec.shape
    blocks = torch.randint(0, 256, spec.shape, generator=gen, dtype=torch.uint8)
    exponent = round(math.log2(1 / (math.sqrt(groups * BLOCK_SIZE) * _FP4_RMS)))
    scales = torch.randint(-1, 2, (E, rows, groups), generator=gen, dtype=torch.int16) + exponent + SCALE_BIAS
    return blocks, scales.to(torch.uint8)


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


def write_checkpoint(directory: str | Path, config: GptOssConfig,
                     weights: dict[str, torch.Tensor] | Iterable[dict[str, torch.Tensor]],
                     max_shard_bytes: int | None = None) -> Path:
    """Write config files and safetensors (sharded with an index past `max_shard_bytes`). `weights`: canonical
    name -> tensor, or an iterable of such parts (each whole layers), written as they come."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    as_dict = config.to_hf_dict() if config.layout == "hf" else config.to_original_dict()
    (directory / "config.json").write_text(json.dumps(as_dict, indent=2) + "\n")
    generation = {"bos_token_id": 199998, "eos_token_id": list(config.eos_token_ids),
                  "pad_token_id": config.pad_token_id, "do_sample": True}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    parts = [weights] if isinstance(weights, dict) else weights
    written = [_save(directory, i, shard) for i, shard in enumerate(_shards(parts, config, max_shard_bytes))]
    if len(written) == 1:
        written[0][0].rename(directory / "model.safetensors")
        return directory
    weight_map, total = {}, 0
    for i, (path, names, nbytes) in enumerate(written):
        file = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        path.rename(directory / file)
        weight_map.update(dict.fromkeys(names, file))
        total += nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory


def _save(directory: Path, i: int, shard: dict[str, torch.Tensor]) -> tuple[Path, list[str], int]:
    """One shard under a temporary name (the shard count is known only at the end) -> (path, names, bytes)."""
    path = directory / f"shard-{i:05d}.safetensors.partial"
    save_file(shard, path, {"format": "pt"})
    return path, list(shard), sum(t.numel() * t.element_size() for t in shard.values())


def _shards(parts: Iterable[dict[str, torch.Tensor]], config: GptOssConfig,
            max_bytes: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """The checkpoint's tensors (in the layout's names) in shards of at most max_bytes (one tensor may exceed)."""
    current, size = {}, 0
    for part in parts:
        for name, t in to_layout(part, config).items():
            nbytes = t.numel() * t.element_size()
            if max_bytes and current and size + nbytes > max_bytes:
                yield current
                current, size = {}, 0
            current[name] = t
            size += nbytes
    yield current


def make_tiny_model(directory: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Generate a checkpoint into `directory` and return it."""
    spec = spec or TinyModelSpec()
    if spec.format not in ("hf", "original"):
        raise ValueError(f"format must be 'hf' or 'original', got {spec.format!r}")
    config = spec.config()
    return write_checkpoint(directory, config, random_parts(config, spec.seed, spec.random_mxfp4),
                            spec.max_shard_bytes)


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("make-tiny-model", help="write a small random gpt-oss checkpoint in the real format")
    parser.add_argument("dir", help="output directory")
    parser.add_argument("--like", choices=sorted(SHAPES), help="a real model's shapes, random MXFP4 expert codes and "
                        "4 GiB shards (the flags below still override)")
    defaults = TinyModelSpec()
    for flag, field in (("--seed", "seed"), ("--layers", "layers"), ("--experts", "experts"),
                        ("--experts-per-token", "experts_per_token"), ("--hidden", "hidden"),
                        ("--intermediate", "intermediate"), ("--heads", "heads"), ("--kv-heads", "kv_heads"),
                        ("--head-dim", "head_dim"), ("--sliding-window", "sliding_window"), ("--vocab", "vocab"),
                        ("--max-shard-bytes", "max_shard_bytes")):
        parser.add_argument(flag, dest=field, type=int, default=None, help=f"default {getattr(defaults, field)}")
    parser.add_argument("--format", choices=["hf", "original"], default=None)
    parser.add_argument("--random-mxfp4", action=argparse.BooleanOptionalAction, default=None,
                        help="draw expert MXFP4 codes directly instead of quantizing bf16 weights")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    preset = {**SHAPES[args.like], **FULL_SIZE} if args.like else {}
    given = {f.name: getattr(args, f.name) for f in fields(TinyModelSpec) if getattr(args, f.name) is not None}
    path = make_tiny_model(args.dir, TinyModelSpec(**{**preset, **given}))
    print(f"wrote {path}")
    return 0
