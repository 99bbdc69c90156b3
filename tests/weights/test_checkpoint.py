"""Loading: layouts and shards agree, and every bad checkpoint fails with an error naming what is wrong."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from engine.model.config import ConfigError
from engine.weights.checkpoint import CheckpointError, load_weights
from engine.weights.tiny_model import TinyModelSpec, make_tiny_model, random_weights, to_layout, write_checkpoint

SPEC = TinyModelSpec(seed=5, layers=2, experts=4, experts_per_token=2, hidden=64, heads=4, kv_heads=2,
                     head_dim=16, vocab=512)


def variant(tmp_path, mutate=None, fmt="hf", config_edit=None):
    """Write the SPEC checkpoint with its named tensors passed through `mutate` and its config through
    `config_edit`."""
    spec = TinyModelSpec(**{**SPEC.__dict__, "format": fmt})
    config = spec.config()
    tensors = to_layout(random_weights(config, spec.seed), config)
    if mutate:
        mutate(tensors)
    write_checkpoint(tmp_path, config, {})  # config files only
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "model.safetensors")
    if config_edit:
        raw = json.loads((tmp_path / "config.json").read_text())
        config_edit(raw)
        (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def test_sharded_checkpoint_loads_the_same_tensors(tmp_path):
    single = make_tiny_model(tmp_path / "one", SPEC)
    sharded = make_tiny_model(tmp_path / "many", TinyModelSpec(**{**SPEC.__dict__, "max_shard_bytes": 40_000}))
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    _, a = load_weights(single, torch.float32)
    _, b = load_weights(sharded, torch.float32)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_original_layout_loads_the_same_tensors_and_qkv_is_split(tmp_path):
    _, hf = load_weights(make_tiny_model(tmp_path / "hf", SPEC), torch.float32)
    original_dir = make_tiny_model(tmp_path / "orig", TinyModelSpec(**{**SPEC.__dict__, "format": "original"}))
    config, original = load_weights(original_dir, torch.float32)
    assert config.layout == "original" and config.max_position_embeddings == 131072
    assert hf.keys() == original.keys() and all(torch.equal(hf[k], original[k]) for k in hf)


def test_original_folder_inside_a_repo_is_found(tmp_path):
    make_tiny_model(tmp_path / "repo" / "original", TinyModelSpec(**{**SPEC.__dict__, "format": "original"}))
    config, _ = load_weights(tmp_path / "repo", torch.float32)
    assert config.layout == "original"


def test_packed_experts_stay_uint8_when_asked(tmp_path):
    _, w = load_weights(make_tiny_model(tmp_path, SPEC), torch.bfloat16, dequantize_experts=False)
    assert w["layers.0.mlp.w1_blocks"].dtype == torch.uint8 and w["layers.0.mlp.w1_blocks"].shape == (4, 128, 2, 16)
    assert w["layers.0.mlp.b1"].dtype == torch.bfloat16 and "layers.0.mlp.w1" not in w


def test_missing_tensor(tmp_path):
    path = variant(tmp_path, lambda t: t.pop("model.layers.1.self_attn.sinks"))
    with pytest.raises(CheckpointError, match=re.escape("missing tensor model.layers.1.self_attn.sinks "
                                                        "(expected shape [4])")):
        load_weights(path)


def test_unexpected_shape(tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 32, dtype=torch.bfloat16)

    with pytest.raises(CheckpointError, match=re.escape("tensor model.layers.0.self_attn.o_proj.weight: expected "
                                                        "shape [64, 64] from the config, found [64, 32]")):
        load_weights(variant(tmp_path, shrink))


def test_unexpected_dtype(tmp_path):
    def wrong(t):
        t["model.layers.0.mlp.experts.down_proj_scales"] = t["model.layers.0.mlp.experts.down_proj_scales"].float()

    with pytest.raises(CheckpointError, match=re.escape("tensor model.layers.0.mlp.experts.down_proj_scales: "
                                                        "expected dtype U8, found F32")):
        load_weights(variant(tmp_path, wrong))


def test_truncated_file(tmp_path):
    path = variant(tmp_path)
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"truncated: tensor \S+ ends at byte \d+ but the file has only \d+ "
                                              r"bytes"):
        load_weights(path)


def test_config_disagreeing_with_tensors_names_the_tensor(tmp_path):
    path = variant(tmp_path, config_edit=lambda c: c.update(num_local_experts=8))
    with pytest.raises(CheckpointError, match=re.escape("tensor model.layers.0.mlp.router.weight: expected shape "
                                                        "[8, 64] from the config, found [4, 64]")):
        load_weights(path)


def test_config_with_fewer_layers_than_the_weights(tmp_path):
    path = variant(tmp_path, config_edit=lambda c: c.update(num_hidden_layers=1, layer_types=c["layer_types"][:1]))
    with pytest.raises(CheckpointError, match="belongs to layer 1 but the config says num_hidden_layers=1"):
        load_weights(path)


def test_original_layout_wrong_qkv_rows(tmp_path):
    def cut(t):
        t["block.0.attn.qkv.weight"] = t["block.0.attn.qkv.weight"][:100]

    with pytest.raises(CheckpointError, match=re.escape("tensor block.0.attn.qkv.weight: expected shape [128, 64] "
                                                        "from the config, found [100, 64]")):
        load_weights(variant(tmp_path, cut, fmt="original"))


def test_missing_shard_file(tmp_path):
    path = make_tiny_model(tmp_path, TinyModelSpec(**{**SPEC.__dict__, "max_shard_bytes": 40_000}))
    next(path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="lists shard files that are missing: \\['model-00002-of-"):
        load_weights(path)


def test_no_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_weights(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(num_key_value_heads=3), "num_attention_heads (4) must be a multiple of num_key_value_heads"),
    (lambda c: c.update(num_experts_per_tok=5), "experts_per_token (5) cannot exceed num_experts (4)"),
    (lambda c: c.pop("hidden_size"), "missing key 'hidden_size'"),
    (lambda c: c.update(intermediate_size=48), "intermediate_size (48) must be a multiple of 32"),
    (lambda c: c.update(layer_types=["sliding_attention"]), "layer_types has 1 entries but num_hidden_layers is 2"),
    (lambda c: c.update(head_dim=0), "head_dim must be a positive integer, got 0"),
])
def test_inconsistent_config(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_weights(variant(tmp_path, config_edit=edit))


def test_original_config_errors_name_the_file(tmp_path):
    path = variant(tmp_path, fmt="original", config_edit=lambda c: c.update(experts_per_token=9))
    with pytest.raises(ConfigError, match=r"config\.json: experts_per_token \(9\) cannot exceed num_experts \(4\)"):
        load_weights(path)
