"""Launch plans: each op launches exactly what its plan says, and a plan depends on shapes, dtypes and the SM count
only, so the tools that plan on meta tensors (bench.kernel_resources, bench.roofline) see the real launches."""

import math

import pytest
import torch

from engine.kernels import attention, launch, moe, norm, rope, router

from ._util import mxfp4_weights, triton_path


def _op_args():
    """(op, plan, args) of every op at small shapes, on CPU."""
    g = torch.Generator().manual_seed(0)
    T, H, E, K, I, HQ, KV, D, BS = 5, 64, 4, 2, 32, 8, 2, 16, 4
    x, res = torch.randn(T, H, generator=g), torch.randn(T, H, generator=g)
    q, k, v = torch.randn(T, HQ, D, generator=g), torch.randn(T, KV, D, generator=g), torch.randn(T, KV, D, generator=g)
    cache = torch.zeros(2, 8, BS, KV, D)
    slots = torch.arange(T, dtype=torch.int64)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).int()
    weights = torch.softmax(torch.randn(T, K, generator=g), -1)
    w1 = mxfp4_weights(E, 2 * I, H, std=0.3, generator=g)
    w2 = mxfp4_weights(E, H, I, std=0.3, generator=g)
    experts = (*w1, torch.randn(E, 2 * I, generator=g), *w2, torch.randn(E, H, generator=g))
    table, seq_lens = torch.arange(1, 8, dtype=torch.int32).view(1, 7), torch.tensor([T], dtype=torch.int32)
    qsl, sinks = torch.tensor([0, T], dtype=torch.int32), torch.randn(HQ, generator=g)
    cos_sin = rope.yarn_cos_sin_cache(D, 32, 150000.0, 32.0, 4096, 32.0, 1.0)
    return [
        (norm.rms_norm, norm.plan_rms_norm, (x, torch.ones(H), 1e-5, res)),
        (router.router_topk, router.plan_router_topk, (torch.randn(T, E, generator=g), K)),
        (attention.write_kv, attention.plan_write_kv, (cache, k, v, slots)),
        (rope.rope_and_write_kv, rope.plan_rope_and_write_kv, (q, k, v, slots, cos_sin, cache, slots)),
        (attention.paged_attention, attention.plan_paged_attention, (q, cache, table, seq_lens, qsl, sinks, 3,
                                                                     D**-0.5)),
        (moe.moe_mxfp4, moe.plan_moe_mxfp4, (x, ids, weights, *experts)),
    ]


def _key(launches):
    return [(l.name, l.grid, l.meta) for l in launches]


def _plan_launches(plan, args, **kwargs):
    out = plan(*args, **kwargs)
    return out if isinstance(out, list) else out[1]


@triton_path
@pytest.mark.parametrize("index", range(6), ids=lambda i: _op_args()[i][0].__name__)
def test_op_launches_what_its_plan_says(index, monkeypatch):
    op, plan, args = _op_args()[index]
    ran = []
    real_call = launch.Launch.__call__
    monkeypatch.setattr(launch.Launch, "__call__", lambda self: (ran.append(self), real_call(self)))
    op(*args)
    assert ran and _key(ran) == _key(_plan_launches(plan, args))


@pytest.mark.parametrize("index", range(6), ids=lambda i: _op_args()[i][0].__name__)
@pytest.mark.parametrize("sms", [None, 132])
def test_a_plan_reads_shapes_not_data(index, sms):
    """The same plan on meta tensors (what the tools do) as on the real ones."""
    op, plan, args = _op_args()[index]
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    extra = {"sms": sms} if "sms" in plan.__code__.co_varnames else {}
    assert _key(_plan_launches(plan, meta, **extra)) == _key(_plan_launches(plan, args, **extra))


def test_decode_splits_keys_to_fill_the_sms():
    q, kv_cache = torch.empty(1, 64, 64, device="meta"), torch.empty(2, 300, 16, 8, 64, device="meta")
    table = torch.empty(1, 257, dtype=torch.int32, device="meta")  # 4112 keys a sequence can hold
    seq = (table, torch.empty(1, dtype=torch.int32, device="meta"), torch.empty(2, dtype=torch.int32, device="meta"),
           torch.empty(64, device="meta"))
    _, full = attention.plan_paged_attention(q, kv_cache, *seq, None, 0.125, sms=132)
    assert [l.name for l in full] == ["_paged_attention_kernel", "_merge_splits_kernel"]
    assert full[0].grid == (1, 8, math.ceil(2 * 132 / 8))  # 8 KV heads x 33 splits: two programs per SM
    _, window = attention.plan_paged_attention(q, kv_cache, *seq, 128, 0.125, sms=132)
    assert window[0].meta["NUM_SPLITS"] == math.ceil(128 / window[0].meta["BLOCK_N"])  # 128 keys: whole key tiles
    _, cpu = attention.plan_paged_attention(q, kv_cache, *seq, None, 0.125)
    assert len(cpu) == 1 and cpu[0].meta["NUM_SPLITS"] == 1  # no SM count off CUDA: no split


def test_moe_narrows_gemm_tiles_until_the_sms_fill():
    """One token, 4 experts, a TP-8 shard of gpt-oss-120b's intermediate (I = 352: 704 W1 rows, 11 tiles of 64)."""
    E, H, I, m = 128, 2880, 352, dict(device="meta")
    u8 = dict(dtype=torch.uint8, **m)
    experts = (torch.empty(E, 2 * I, H // 32, 16, **u8), torch.empty(E, 2 * I, H // 32, **u8), torch.empty(E, 2 * I, **m),
               torch.empty(E, H, I // 32, 16, **u8), torch.empty(E, H, I // 32, **u8), torch.empty(E, H, **m))
    args = (torch.empty(1, H, dtype=torch.bfloat16, **m), torch.empty(1, 4, dtype=torch.int32, **m),
            torch.empty(1, 4, **m), *experts)
    _, launches = moe.plan_moe_mxfp4(*args, sms=132)
    gemm1, gemm2 = (l for l in launches if "gemm" in l.name)
    assert gemm1.meta["BLOCK_N"] == 16 and 4 * gemm1.grid[1] >= 132  # 4 busy tiles x 44 column tiles
    assert gemm2.meta["BLOCK_N"] == 64 and 4 * gemm2.grid[1] >= 132  # H = 2880: 45 column tiles already fill
    assert all(l.meta["SCALED_DOT"] for l in (gemm1, gemm2))  # bf16 activations: tl.dot_scaled
