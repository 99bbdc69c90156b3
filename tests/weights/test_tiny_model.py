"""make-tiny-model at full size: `--like` takes a real model's shapes (flags still override), the experts' MXFP4
codes are drawn directly at the scale the quantized ones have, and shards are written as the layers come."""

import json

import torch

from engine.cli import main
from engine.weights.checkpoint import load_weights
from engine.weights.mxfp4 import dequantize_mxfp4
from engine.weights.tiny_model import SHAPES, TinyModelSpec, random_weights


def test_like_takes_the_real_shapes_and_shards_as_it_writes(tmp_path):
    """gpt-oss-20b's shapes with the sizes that make it big overridden: heads, head_dim, experts' top-k, window
    stay the real ones; the shard limit splits it into several files with an index."""
    out = tmp_path / "m"
    assert main(["make-tiny-model", str(out), "--like", "gpt-oss-20b", "--layers", "2", "--hidden", "64",
                 "--intermediate", "64", "--experts", "4", "--vocab", "4096", "--max-shard-bytes", "300000"]) == 0
    config = json.loads((out / "config.json").read_text())
    real = SHAPES["gpt-oss-20b"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_local_experts"]) == (2, 64, 4)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
            config["num_experts_per_tok"], config["sliding_window"]) == (real["heads"], real["kv_heads"],
                                                                         real["head_dim"], real["experts_per_token"],
                                                                         real["sliding_window"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == sorted(p.name for p in out.glob("*.safetensors"))
    assert not list(out.glob("*.partial"))
    arch, weights = load_weights(out, torch.float32, dequantize_experts=False)
    assert arch.num_attention_heads == real["heads"] and weights["layers.1.mlp.w1_blocks"].dtype == torch.uint8


def test_random_mxfp4_experts_have_the_quantized_ones_scale():
    spec = TinyModelSpec(layers=1, experts=4, hidden=256, intermediate=128, vocab=512)
    drawn = random_weights(spec.config(), 0, random_mxfp4=True)
    quantized = random_weights(spec.config(), 0)
    for name in ("w1", "w2"):
        rms = [dequantize_mxfp4(w[f"layers.0.mlp.{name}_blocks"], w[f"layers.0.mlp.{name}_scales"],
                                torch.float32).pow(2).mean().sqrt().item() for w in (drawn, quantized)]
        assert 0.5 < rms[0] / rms[1] < 2, (name, rms)
