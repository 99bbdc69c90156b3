"""Checkpoint loading: a gpt-oss directory (HF or `original/` layout, one file or sharded) -> named tensors.

Flow: `Checkpoint(dir)` reads the config and opens every safetensors file with the `safetensors` package
(`safe_open`: headers only, data memory-mapped), `expected_tensors(config)` says what the config implies (canonical
name -> shape and kind), and `load_weights` reads each one through the layout's name map, checking shape and dtype
(`get_slice`: before any data is touched), decoding MXFP4 experts in chunks from the memory map. Tensors come back
as zero-copy views of the map, so a rank that keeps a slice (engine.parallel.loading) reads only that slice.

Canonical names (the engine's own, layout-independent), per layer N:
  layers.N.{attn_norm.weight, mlp_norm.weight}, layers.N.attn.{q,k,v,o}.{weight,bias}, layers.N.attn.sinks,
  layers.N.mlp.{router.weight, router.bias, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2}
  and embed.weight, norm.weight, unembed.weight. They are the reference model's parameter names.
"""

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.model.config import GptOssConfig, config_path, load_config
from engine.weights.mxfp4 import BLOCK_SIZE, dequantize_mxfp4

FLOAT = "float"  # bf16 in the real checkpoints; f16/f32 accepted
PACKED = "uint8"  # MXFP4 blocks and scales
FLOAT_DTYPES = ("BF16", "F16", "F32")  # safetensors' dtype names


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: the message names the file or tensor and what was expected."""


@dataclass(frozen=True)
class Spec:
    shape: tuple[int, ...]
    kind: str  # FLOAT or PACKED


def expected_tensors(c: GptOssConfig) -> dict[str, Spec]:
    """Every tensor the config implies, by canonical name (E experts, D hidden, I intermediate)."""
    E, D, I, Dh = c.num_experts, c.hidden_size, c.intermediate_size, c.head_dim
    q_rows, kv_rows = c.num_attention_heads * Dh, c.num_key_value_heads * Dh
    specs = {"embed.weight": Spec((c.vocab_size, D), FLOAT), "norm.weight": Spec((D,), FLOAT),
             "unembed.weight": Spec((c.vocab_size, D), FLOAT)}
    for n in range(c.num_hidden_layers):
        layer = {
            "attn_norm.weight": ((D,), FLOAT), "mlp_norm.weight": ((D,), FLOAT),
            "attn.q.weight": ((q_rows, D), FLOAT), "attn.q.bias": ((q_rows,), FLOAT),
            "attn.k.weight": ((kv_rows, D), FLOAT), "attn.k.bias": ((kv_rows,), FLOAT),
            "attn.v.weight": ((kv_rows, D), FLOAT), "attn.v.bias": ((kv_rows,), FLOAT),
            "attn.o.weight": ((D, q_rows), FLOAT), "attn.o.bias": ((D,), FLOAT),
            "attn.sinks": ((c.num_attention_heads,), FLOAT),
            "mlp.router.weight": ((E, D), FLOAT), "mlp.router.bias": ((E,), FLOAT),
            "mlp.w1_blocks": ((E, 2 * I, D // BLOCK_SIZE, BLOCK_SIZE // 2), PACKED),
            "mlp.w1_scales": ((E, 2 * I, D // BLOCK_SIZE), PACKED), "mlp.b1": ((E, 2 * I), FLOAT),
            "mlp.w2_blocks": ((E, D, I // BLOCK_SIZE, BLOCK_SIZE // 2), PACKED),
            "mlp.w2_scales": ((E, D, I // BLOCK_SIZE), PACKED), "mlp.b2": ((E, D), FLOAT),
        }
        specs.update({f"layers.{n}.{k}": Spec(shape, kind) for k, (shape, kind) in layer.items()})
    return specs


# canonical suffix -> HF name suffix (prefix "model.layers.N.")
_HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight", "attn.q.bias": "self_attn.q_proj.bias",
    "attn.k.weight": "self_attn.k_proj.weight", "attn.k.bias": "self_attn.k_proj.bias",
    "attn.v.weight": "self_attn.v_proj.weight", "attn.v.bias": "self_attn.v_proj.bias",
    "attn.o.weight": "self_attn.o_proj.weight", "attn.o.bias": "self_attn.o_proj.bias",
    "attn.sinks": "self_attn.sinks", "mlp.router.weight": "mlp.router.weight", "mlp.router.bias": "mlp.router.bias",
    "mlp.w1_blocks": "mlp.experts.gate_up_proj_blocks", "mlp.w1_scales": "mlp.experts.gate_up_proj_scales",
    "mlp.b1": "mlp.experts.gate_up_proj_bias", "mlp.w2_blocks": "mlp.experts.down_proj_blocks",
    "mlp.w2_scales": "mlp.experts.down_proj_scales", "mlp.b2": "mlp.experts.down_proj_bias",
}
_HF_GLOBAL = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "unembed.weight": "lm_head.weight"}
# canonical suffix -> original name suffix (prefix "block.N."); q, k and v are row ranges of attn.qkv
_ORIGINAL_LAYER = {
    "attn_norm.weight": "attn.norm.scale", "mlp_norm.weight": "mlp.norm.scale", "attn.o.weight": "attn.out.weight",
    "attn.o.bias": "attn.out.bias", "attn.sinks": "attn.sinks", "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.bias": "mlp.gate.bias", "mlp.w1_blocks": "mlp.mlp1_weight.blocks",
    "mlp.w1_scales": "mlp.mlp1_weight.scales", "mlp.b1": "mlp.mlp1_bias", "mlp.w2_blocks": "mlp.mlp2_weight.blocks",
    "mlp.w2_scales": "mlp.mlp2_weight.scales", "mlp.b2": "mlp.mlp2_bias",
}
_ORIGINAL_GLOBAL = {"embed.weight": "embedding.weight", "norm.weight": "norm.scale",
                    "unembed.weight": "unembedding.weight"}
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")


def source_name(canonical: str, config: GptOssConfig) -> tuple[str, slice | None]:
    """The checkpoint tensor holding `canonical`, and the row range of it (original q/k/v live in one qkv)."""
    m = _LAYER_NAME.match(canonical)
    if config.layout == "hf":
        return (f"model.layers.{m[1]}.{_HF_LAYER[m[2]]}" if m else _HF_GLOBAL[canonical]), None
    if not m:
        return _ORIGINAL_GLOBAL[canonical], None
    module, part, field = (m[2].split(".") + ["", ""])[:3]
    if module == "attn" and part in ("q", "k", "v"):
        q_rows = config.num_attention_heads * config.head_dim
        kv_rows = config.num_key_value_heads * config.head_dim
        start = {"q": 0, "k": q_rows, "v": q_rows + kv_rows}[part]
        return f"block.{m[1]}.attn.qkv.{field}", slice(start, start + (q_rows if part == "q" else kv_rows))
    return f"block.{m[1]}.{_ORIGINAL_LAYER[m[2]]}", None


class Checkpoint:
    """The tensors of one checkpoint directory, indexed by their names in the files (data not yet read)."""

    def __init__(self, model_dir: str | Path):
        self.dir = config_path(model_dir).parent
        self.config = load_config(model_dir)
        self.index: dict[str, tuple[Path, object]] = {}  # tensor name -> (file, its safe_open handle)
        for path in self._shard_paths():
            handle = open_safetensors(path)
            for name in handle.keys():
                if name in self.index:
                    raise CheckpointError(f"tensor {name} appears in both {self.index[name][0].name} and "
                                          f"{path.name}")
                self.index[name] = (path, handle)
        self._check_layer_count()

    def _shard_paths(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            paths = sorted({self.dir / f for f in weight_map.values()})
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shard files that are missing: {missing}")
            return paths
        paths = sorted(self.dir.glob("*.safetensors"))
        if not paths:
            raise CheckpointError(f"{self.dir}: no *.safetensors files and no model.safetensors.index.json")
        return paths

    def _check_layer_count(self):
        n = self.config.num_hidden_layers
        for name in self.index:
            m = re.match(r"^(?:model\.layers|block)\.(\d+)\.", name)
            if m and int(m[1]) >= n:
                raise CheckpointError(f"tensor {name} belongs to layer {m[1]} but the config says "
                                      f"num_hidden_layers={n}: the config disagrees with the weights")

    def read(self, canonical: str, spec: Spec) -> torch.Tensor:
        """A zero-copy view of one tensor, checked against the shape and kind the config implies."""
        name, rows = source_name(canonical, self.config)
        if name not in self.index:
            raise CheckpointError(f"{self.dir}: missing tensor {name} (expected shape {list(spec.shape)})")
        tensor = self.index[name][1].get_slice(name)
        if rows is None:
            _check(name, tensor, spec)
            return tensor[:]
        qkv_rows = (self.config.num_attention_heads + 2 * self.config.num_key_value_heads) * self.config.head_dim
        _check(name, tensor, Spec((qkv_rows, *spec.shape[1:]), spec.kind))
        return tensor[rows]


def _check(name: str, tensor, spec: Spec):
    """Shape and dtype of a safetensors slice against the spec, before any of its data is read."""
    if tuple(tensor.get_shape()) != spec.shape:
        raise CheckpointError(f"tensor {name}: expected shape {list(spec.shape)} from the config, "
                              f"found {list(tensor.get_shape())}")
    dtype = tensor.get_dtype()
    if not (dtype in FLOAT_DTYPES if spec.kind == FLOAT else dtype == "U8"):
        want = "BF16, F16 or F32" if spec.kind == FLOAT else "U8"
        raise CheckpointError(f"tensor {name}: expected dtype {want}, found {dtype}")


def open_safetensors(path: Path):
    """`safe_open` on one file (memory-mapped; tensors are zero-copy views); a file it refuses raises a
    CheckpointError naming the file and, when the header says so, the tensor that lies past the end."""
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as e:
        raise CheckpointError(f"{path}: {_why_unreadable(path) or e}") from None


def _why_unreadable(path: Path) -> str | None:
    """What is wrong with a file safetensors refused, read from its header: 8-byte little-endian length N, N bytes
    of JSON {name: {dtype, shape, data_offsets}}, then the data (offsets relative to the end of the header)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            return f"truncated: {size} bytes, too short for a safetensors header"
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            return f"truncated: header needs {8 + header_len} bytes, file has {size}"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"header is not valid JSON ({e})"
    header.pop("__metadata__", None)
    for name, meta in header.items():
        end = 8 + header_len + meta["data_offsets"][1]
        if end > size:
            return (f"truncated: tensor {name} ends at byte {end} but the file has only {size} bytes (re-download "
                    "or re-copy the file)")
    return None


def load_weights(
    model_dir: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
    dequantize_experts: bool = True,
) -> tuple[GptOssConfig, dict[str, torch.Tensor]]:
    """Read every tensor of the checkpoint, cast floats to `dtype` and place them on `device`.

    With `dequantize_experts` the MXFP4 pairs become dense `layers.N.mlp.w1` [E, 2I, D] and `.w2` [E, D, I];
    without, the packed `*_blocks` / `*_scales` stay uint8 for the kernels that decode them on the fly.
    """
    ckpt = Checkpoint(model_dir)
    specs = expected_tensors(ckpt.config)
    weights = {}
    for name, spec in specs.items():
        if name.endswith("_scales") and dequantize_experts:
            continue
        if name.endswith("_blocks") and dequantize_experts:
            scales_name = name.replace("_blocks", "_scales")
            blocks, scales = ckpt.read(name, spec), ckpt.read(scales_name, specs[scales_name])
            weights[name.replace("_blocks", "")] = dequantize_mxfp4(blocks, scales, dtype).to(device)
            continue
        tensor = ckpt.read(name, spec)
        weights[name] = tensor.to(device=device, dtype=dtype if spec.kind == FLOAT else tensor.dtype, copy=True)
    return ckpt.config, weights
