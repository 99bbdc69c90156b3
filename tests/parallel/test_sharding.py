"""Sharding rules and sharded loading, in one process: every rank's slices put back together are the checkpoint,
KV heads are replicated past TP = KV, MXFP4 blocks are never cut, and each rank copies only its part."""

import pytest
import torch

from engine.model.config import GptOssConfig
from engine.config import EngineConfig, ParallelConfig
from engine.parallel.loading import category, load_shard, tensor_bytes
from engine.parallel.tp import RankLayout, kv_heads, q_heads, shard_of, split
from engine.weights.checkpoint import load_weights
from engine.weights.tiny_model import TinyModelSpec
from tests.parallel.conftest import SPEC

GPT_OSS_120B = TinyModelSpec(layers=36, experts=128, experts_per_token=4, hidden=2880, intermediate=2880, heads=64,
                             kv_heads=8, head_dim=64).config()


def layouts(tp: int, dp: int, ep: bool) -> list[RankLayout]:
    return [RankLayout(r, tp, dp, ep) for r in range(tp * dp)]


def rebuilt(name: str, full: torch.Tensor, config: GptOssConfig, ranks: list[RankLayout]) -> torch.Tensor:
    """The tensor put back together from the distinct shards of `ranks` (replicated ones taken once)."""
    shards = [shard_of(name, config, layout) for layout in ranks]
    if shards[0].dim is None:
        return full if not shards[0].zero else sum(s.take(full) * (not s.zero) for s in shards)
    distinct = sorted({(s.start, s.stop): s for s in shards}.values(), key=lambda s: s.start)
    return torch.cat([s.take(full) for s in distinct], dim=distinct[0].dim)


@pytest.mark.parametrize("tp, dp, ep", [(2, 1, False), (2, 1, True), (4, 1, True), (4, 1, False), (2, 2, True),
                                        (8, 1, False)])
def test_shards_put_back_together_are_the_checkpoint(parallel_model, tp, dp, ep):
    config, full = load_weights(parallel_model, torch.float32, dequantize_experts=False)
    if tp == 8:  # more ranks than KV heads and than MXFP4 blocks per expert: a config that allows it
        with pytest.raises(ValueError, match="intermediate_size 128 has 4 MXFP4 blocks"):
            ParallelConfig(tp).check_model(config)
        return
    ParallelConfig(tp, dp, ep).check_model(config)
    for name, tensor in full.items():
        torch.testing.assert_close(rebuilt(name, tensor, config, layouts(tp, dp, ep)), tensor, rtol=0, atol=0,
                                   msg=name)


def test_kv_heads_are_replicated_past_tp_equal_kv():
    c = GPT_OSS_120B  # 64 query heads, 8 KV heads: head h reads KV head h // 8
    for tp in (2, 4, 8, 16, 32, 64):
        for layout in layouts(tp, 1, True):
            h0, h1 = q_heads(c, layout)
            k0, k1 = kv_heads(c, layout)
            assert {h // c.q_per_kv for h in range(h0, h1)} <= set(range(k0, k1))  # every KV head it reads
            assert k1 - k0 == max(1, 8 // tp)
    assert [kv_heads(c, lay) for lay in layouts(16, 1, True)][:4] == [(0, 1), (0, 1), (1, 2), (1, 2)]


def test_expert_slices_keep_mxfp4_blocks_and_gate_up_pairs_whole():
    c = GPT_OSS_120B  # I = 2880 = 90 blocks of 32: 8 ranks get 11 or 12 blocks each
    for layout in layouts(8, 1, False):
        w1 = shard_of("layers.0.mlp.w1_blocks", c, layout)
        w2 = shard_of("layers.0.mlp.w2_blocks", c, layout)
        assert (w1.dim, w2.dim) == (1, 2)
        assert w1.start % 64 == 0 and w1.stop % 64 == 0  # 2 rows (gate, up) per unit, 32 units per block
        assert (w1.start // 2, w1.stop // 2) == (w2.start * 32, w2.stop * 32)  # the same units on both sides
        assert w2.stop - w2.start in (11, 12)
        assert shard_of("layers.0.mlp.b2", c, layout).zero == (layout.rank != 0)  # bias added once
    for name in ("w1_blocks", "w2_scales", "b1", "b2"):  # with EP: whole experts, 16 of the 128 per rank
        shards = [shard_of(f"layers.0.mlp.{name}", c, lay) for lay in layouts(8, 1, True)]
        assert [(s.dim, s.start, s.stop) for s in shards[:2]] == [(0, 0, 16), (0, 16, 32)]


def test_split_is_near_equal_and_covers_everything():
    for n, parts, unit in ((201088, 8, 1), (4097, 4, 1), (2880, 8, 32), (128, 4, 32)):
        pieces = [split(n, parts, i, unit) for i in range(parts)]
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        sizes = [b - a for a, b in pieces]
        assert max(sizes) - min(sizes) <= unit and all(s % unit == 0 for s in sizes)


@pytest.mark.parametrize("dequantize", [True, False])
def test_each_rank_copies_only_its_share(parallel_model, dequantize):
    """Bytes per rank: experts / N (EP) and vocab / TP exactly; attention / TP apart from the o bias; the norms
    and routers replicated. The sum over ranks of the sharded parts is the checkpoint's."""
    _, full = load_weights(parallel_model, torch.float32, dequantize_experts=dequantize)
    whole = tensor_bytes(full)
    for tp, dp in ((2, 1), (4, 1), (2, 2)):
        world = tp * dp
        per_rank = [tensor_bytes(load_shard(parallel_model, lay, torch.float32, dequantize_experts=dequantize)[1])
                    for lay in layouts(tp, dp, True)]
        o_bias = SPEC.layers * SPEC.hidden * 4
        kv_copies = max(1, tp // SPEC.kv_heads)  # KV heads held by TP/KV ranks each past TP = KV
        kv_bytes = SPEC.layers * 2 * (SPEC.kv_heads * SPEC.head_dim) * (SPEC.hidden + 1) * 4
        for b in per_rank:
            assert b["experts"] * world == whole["experts"]
            assert b["vocab"] * tp == whole["vocab"]
            assert b["replicated"] == whole["replicated"]
            assert (b["attention"] - o_bias) * tp == whole["attention"] - o_bias + kv_bytes * (kv_copies - 1)
        assert max(b["total"] for b in per_rank) <= whole["total"] / tp + whole["replicated"] + o_bias + kv_bytes


def test_categories_cover_every_tensor():
    assert category("embed.weight") == category("unembed.weight") == "vocab"
    assert category("layers.3.attn.sinks") == "attention"
    assert category("layers.3.mlp.w2_scales") == category("layers.3.mlp.b1") == "experts"
    assert category("layers.3.mlp.router.weight") == category("norm.weight") == "replicated"


@pytest.mark.parametrize("args, message", [
    (dict(tensor_parallel_size=3), "tensor_parallel_size 3 must divide num_attention_heads 8"),
    (dict(tensor_parallel_size=2, data_parallel_size=4, enable_expert_parallel=True),
     "expert parallelism over 8 ranks needs at least 8 experts"),
])
def test_splits_the_model_cannot_take_are_refused(parallel_model, args, message):
    from engine import LLM

    with pytest.raises(ValueError, match=message):
        LLM(parallel_model, dtype="float32", device="cpu", **args)


@pytest.mark.parametrize("field, value, message", [
    ("tensor_parallel_size", 0, "tensor_parallel_size must be a positive integer"),
    ("distributed_executor_backend", "mpi", "distributed_executor_backend must be one of"),
    ("collective_timeout_s", 0, "collective_timeout_s must be a positive number of seconds"),
    ("moe_dispatch", "alltoall", "needs enable_expert_parallel=True"),
])
def test_engine_config_validates_parallel_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_kwargs(model="unused", **{field: value})


def test_cli_flags_reach_the_engine(monkeypatch, parallel_model, capsys):
    import engine.llm
    from engine.cli import main

    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise SystemExit(0)

    monkeypatch.setattr(engine.llm, "LLM", FakeLLM)
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(parallel_model), "--prompt-ids", "1,2", "--tensor-parallel-size", "2",
              "--data-parallel-size", "2", "--enable-expert-parallel", "--distributed-executor-backend", "ray",
              "--moe-dispatch", "alltoall"])
    assert (seen["tensor_parallel_size"], seen["data_parallel_size"], seen["enable_expert_parallel"],
            seen["distributed_executor_backend"], seen["moe_dispatch"]) == (2, 2, True, "ray", "alltoall")
