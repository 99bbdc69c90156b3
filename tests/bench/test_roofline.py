"""bench.roofline: bytes and FLOPs per launch counted by hand for the MoE GEMMs and paged attention at gpt-oss-120b
shapes, the time limits of each GPU, and which GPU a CUDA device name denotes."""

import pytest
import torch

from bench import roofline
from bench.roofline import GPUS, Load, Work
from engine.kernels import attention, moe

H = I = 2880
E, K = 128, 4


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _moe_launches(T: int):
    u8 = dict(dtype=torch.uint8)
    experts = (_meta(E, 2 * I, H // 32, 16, **u8), _meta(E, 2 * I, H // 32, **u8), _meta(E, 2 * I),
               _meta(E, H, I // 32, 16, **u8), _meta(E, H, I // 32, **u8), _meta(E, H))
    _, launches = moe.plan_moe_mxfp4(_meta(T, H), _meta(T, K, dtype=torch.int32), _meta(T, K, dtype=torch.float32),
                                     *experts, sms=132)
    return {launch.name: launch for launch in launches}


def test_moe_gemms_at_batch_one_read_four_experts_weights():
    gemms = _moe_launches(1)
    load = Load(active_experts=4, assignments=4)
    w1 = roofline.work(gemms["_moe_gemm1_kernel"], load)
    expert_w1 = 2 * I * H // 2 + 2 * I * H // 32 + 2 * I * 2  # packed bytes, scales, bf16 bias
    assert w1.bytes == 4 * expert_w1 + H * 2 + 4 * (I * 2 + 4)  # + x, + act rows written with their indices
    assert w1.flops == 2 * 4 * H * 2 * I
    assert w1.programs == 4 * gemms["_moe_gemm1_kernel"].grid[1]  # one busy tile per expert; the spare one exits
    w2 = roofline.work(gemms["_moe_gemm2_kernel"], load)
    assert w2.bytes == 4 * (H * I // 2 + H * I // 32 + H * 2) + 4 * (I * 2 + H * 4 + 8)
    assert w2.flops == 2 * 4 * I * H
    h100 = next(g for g in GPUS if g.name == "H100 SXM")
    assert w1.seconds(h100) == pytest.approx(w1.bytes / 3.35e12)  # decode is memory bound


def test_prefill_gemm_is_compute_bound_on_hopper():
    T = 8192
    launch = _moe_launches(T)["_moe_gemm1_kernel"]
    w = roofline.work(launch, Load(active_experts=E, assignments=T * K))
    h100 = next(g for g in GPUS if g.name == "H100 SXM")
    assert w.compute_seconds(h100) > w.memory_seconds(h100)
    assert w.seconds(h100) == pytest.approx(2 * T * K * H * 2 * I / 989e12)


def test_attention_load_counts_window_and_causal_pairs():
    assert roofline.attention_load([10], [1], None) == Load(kv_rows=10, pairs=10)  # decode: every key, once
    assert roofline.attention_load([10], [1], 4) == Load(kv_rows=4, pairs=4)
    assert roofline.attention_load([6], [6], None) == Load(kv_rows=6, pairs=21)  # prefill: 1 + 2 + ... + 6
    assert roofline.attention_load([6], [6], 2) == Load(kv_rows=6, pairs=11)  # 1 + 2 * 5
    assert roofline.attention_load([5, 9], [1, 1], None) == Load(kv_rows=14, pairs=14)


def test_paged_attention_decode_reads_the_cache_once():
    T, HQ, KV, D, ctx = 8, 64, 8, 64, 4096
    blocks = ctx // 16 + 1
    cache = _meta(2, 1 + T * blocks, 16, KV, D)
    seq = (_meta(T, blocks, dtype=torch.int32), _meta(T, dtype=torch.int32), _meta(T + 1, dtype=torch.int32),
           _meta(HQ, dtype=torch.float32))
    _, launches = attention.plan_paged_attention(_meta(T, HQ, D), cache, *seq, None, 0.125, sms=132)
    load = roofline.attention_load([ctx] * T, [1] * T, None)
    w = roofline.work(launches[0], load)
    splits = launches[0].meta["NUM_SPLITS"]
    assert splits > 1  # 8 sequences x 8 KV heads = 64 programs < 132 SMs
    assert w.bytes == T * ctx * KV * D * 2 * 2 + T * HQ * D * 2 + T * HQ * splits * (D + 2) * 4
    assert w.flops == 4 * HQ * D * T * ctx


def test_expected_active_experts():
    assert roofline.expected_active_experts(1, 128, 4) == pytest.approx(4)
    assert roofline.expected_active_experts(8192, 128, 4) == pytest.approx(128)
    assert 100 < roofline.expected_active_experts(64, 128, 4) < 128  # collisions


def test_work_time_is_the_slower_limit():
    b200 = next(g for g in GPUS if g.name == "B200")
    assert Work(8e9, 0, 1).seconds(b200) == pytest.approx(1e-3)
    assert Work(0, 2.25e15, 1).seconds(b200) == pytest.approx(1.0)


@pytest.mark.parametrize("device,name", [("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H200", "H200"),
                                         ("NVIDIA B200", "B200"), ("NVIDIA H100 PCIe", None),
                                         ("NVIDIA H100 NVL", None), ("NVIDIA A100-SXM4-80GB", None)])
def test_gpu_named(device, name):
    gpu = roofline.gpu_named(device)
    assert (gpu.name if gpu else None) == name
