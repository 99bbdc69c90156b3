"""Roofline of one kernel launch: the bytes it must move, the FLOPs it must do, and the time a GPU's memory and
compute limits allow for them. Predictions, not measurements; bench.gpu prints measured times next to them.

Flow: a `Launch` (engine.kernels.launch, from the op's own plan) + a `Load` (the facts of the data a launch's
traffic depends on: active experts, visible keys) -> `work(launch, load)` -> `Work` (bytes, flops)
-> `Work.seconds(gpu)` = max(bytes / bandwidth, flops / bf16 peak).

Bytes count unique traffic: every input element read once, every output written once (re-reads that L2 serves
are not counted); FLOPs count useful multiply-adds (2 per MAC), not padded tile rows.
"""

import math
from dataclasses import dataclass

import torch

from engine.kernels.launch import Launch


@dataclass(frozen=True)
class GPU:
    """Published peak figures of one GPU (dense, no sparsity)."""

    name: str
    capability: int  # compute capability x 10: 90 Hopper, 100 Blackwell (the compile target)
    sms: int  # streaming multiprocessors
    bandwidth: float  # HBM bytes/s
    bf16_flops: float  # dense bf16 tensor-core FLOP/s
    source: str  # where the figures come from


GPUS = (
    GPU("H100 SXM", 90, 132, 3.35e12, 989e12, "NVIDIA H100 datasheet (SXM5): 3.35 TB/s, bf16 989 TFLOPS dense"),
    GPU("H200", 90, 132, 4.8e12, 989e12, "NVIDIA H200 datasheet (SXM): 4.8 TB/s, bf16 989 TFLOPS dense"),
    GPU("B200", 100, 148, 8.0e12, 2250e12, "NVIDIA Blackwell architecture technical brief, HGX B200 (1,000 W): "
        "8 TB/s, bf16 tensor 2.25 PFLOPS dense (4.5 with 2:4 sparsity)"),
)


def gpu_named(device_name: str) -> GPU | None:
    """The entry of GPUS that a CUDA device name (torch.cuda.get_device_name) denotes; None for any other GPU,
    PCIe and NVL boards included (other bandwidth, clocks and SM counts)."""
    name = device_name.upper()
    if "PCIE" in name or "NVL" in name:
        return None
    return next((gpu for gpu in GPUS if gpu.name.split()[0] in name), None)


@dataclass(frozen=True)
class Load:
    """What a launch's traffic depends on beyond shapes: facts of the data (expected values for predictions)."""

    active_experts: float = 0.0  # local experts with at least one assignment (the MoE GEMMs read only theirs)
    assignments: float = 0.0  # (token, expert) pairs whose expert is local: rows the MoE GEMMs compute
    kv_rows: int = 0  # key positions read per KV head, summed over sequences (attention)
    pairs: int = 0  # visible (query, key) pairs per query head, summed over sequences (attention)


@dataclass(frozen=True)
class Work:
    bytes: float
    flops: float
    programs: float  # programs expected to do work (spare tiles that exit at once are not counted)

    def seconds(self, gpu: GPU) -> float:
        """The roofline time: the slower of streaming `bytes` and computing `flops` at the GPU's peaks."""
        return max(self.memory_seconds(gpu), self.compute_seconds(gpu))

    def memory_seconds(self, gpu: GPU) -> float:
        return self.bytes / gpu.bandwidth

    def compute_seconds(self, gpu: GPU) -> float:
        return self.flops / gpu.bf16_flops


@dataclass
class PlannedLaunch:
    """A launch an op's plan made, with the data facts its roofline needs."""

    op: str  # the public op (engine.kernels.<op>)
    launch: Launch
    load: Load


def attention_load(seq_lens: list[int], q_lens: list[int], window: int | None) -> Load:
    """Keys read and visible (query, key) pairs of sequences whose last q_len of seq_len positions are queries."""
    kv_rows = pairs = 0
    for seq_len, q_len in zip(seq_lens, q_lens):
        first_query = seq_len - q_len
        kv_rows += seq_len - (max(0, first_query - window + 1) if window else 0)
        pairs += sum(min(p + 1, window or p + 1) for p in range(first_query, seq_len))
    return Load(kv_rows=kv_rows, pairs=pairs)


def expected_active_experts(tokens: int, experts: int, top_k: int) -> float:
    """Distinct experts hit by `tokens` tokens under uniform routing: E (1 - (1 - K/E)^T)."""
    return experts * (1 - (1 - top_k / experts) ** tokens)


def work(launch: Launch, load: Load) -> Work:
    """Bytes, FLOPs and busy programs of one launch (shapes and dtypes from its own arguments)."""
    nbytes, flops = _WORK[launch.name](launch, load)
    return Work(nbytes, flops, _busy_programs(launch, load))


def _busy_programs(launch: Launch, load: Load) -> float:
    """The grid, less the MoE GEMMs' spare tiles: each active expert's rows make ceil(rows / BLOCK_M) tiles."""
    if launch.name not in ("_moe_gemm1_kernel", "_moe_gemm2_kernel"):
        return launch.programs
    if not load.active_experts:
        return 0
    rows = load.assignments / load.active_experts
    tiles = load.active_experts * math.ceil(rows / launch.meta["BLOCK_M"] - 1e-9)
    return min(tiles, launch.grid[0]) * launch.grid[1]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _rms_norm(launch: Launch, load: Load) -> tuple[float, float]:
    x = launch.tensor("x_ptr")
    rows = 4 if launch.meta["HAS_RESIDUAL"] else 2  # x, out (+ residual in, new residual out)
    return rows * _nbytes(x) + _nbytes(launch.tensor("w_ptr")), 4 * x.numel()


def _router_topk(launch: Launch, load: Load) -> tuple[float, float]:
    ids, weights = launch.tensor("ids_ptr"), launch.tensor("weights_ptr")
    return _nbytes(launch.tensor("logits_ptr")) + _nbytes(ids) + _nbytes(weights), 0


def _write_kv(launch: Launch, load: Load) -> tuple[float, float]:
    k, v = launch.tensor("k_ptr"), launch.tensor("v_ptr")
    return 2 * (_nbytes(k) + _nbytes(v)) + _nbytes(launch.tensor("slot_ptr")), 0


def _rope_write_kv(launch: Launch, load: Load) -> tuple[float, float]:
    q, k, v = launch.tensor("q_ptr"), launch.tensor("k_ptr"), launch.tensor("v_ptr")
    T = q.shape[0]
    cos_sin = T * 2 * launch.meta["HALF"] * 4
    return 2 * _nbytes(q) + 3 * _nbytes(k) + 2 * _nbytes(v) + cos_sin + 2 * T * 8, 6 * (q.numel() + k.numel())


def _paged_attention(launch: Launch, load: Load) -> tuple[float, float]:
    q, cache = launch.tensor("q_ptr"), launch.tensor("cache_ptr")
    KV, D, splits = launch.meta["KV"], launch.meta["D"], launch.meta["NUM_SPLITS"]
    kv = load.kv_rows * KV * D * 2 * cache.element_size()
    T, HQ = q.shape[:2]
    out = _nbytes(q) if splits == 1 else T * HQ * splits * (D + 2) * 4  # output, or partial softmax states
    return _nbytes(q) + kv + out, 4 * HQ * D * load.pairs


def _merge_splits(launch: Launch, load: Load) -> tuple[float, float]:
    out = launch.tensor("out_ptr")
    T, HQ, D = out.shape
    return T * HQ * launch.meta["NUM_SPLITS"] * (D + 2) * 4 + _nbytes(out), 0


def _route(launch: Launch, load: Load) -> tuple[float, float]:
    ids = launch.tensor("ids_ptr")
    tiles = launch.tensor("tile_expert_ptr")
    return 2 * _nbytes(ids) + 3 * _nbytes(tiles), 0


def _expert_bytes(blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor, load: Load) -> float:
    """Packed weights, scales and biases of the active experts (each read once)."""
    E = blocks.shape[0]
    return load.active_experts * (_nbytes(blocks) + _nbytes(scales) + _nbytes(bias)) / E


def _moe_gemm1(launch: Launch, load: Load) -> tuple[float, float]:
    x, act, w = launch.tensor("x_ptr"), launch.tensor("act_ptr"), launch.tensor("w_ptr")
    H, I2 = x.shape[1], w.shape[1]
    weights = _expert_bytes(w, launch.tensor("s_ptr"), launch.tensor("b_ptr"), load)
    traffic = _nbytes(x) + weights + load.assignments * (act.shape[1] * act.element_size() + 4)
    return traffic, 2 * load.assignments * H * I2


def _moe_gemm2(launch: Launch, load: Load) -> tuple[float, float]:
    act, w = launch.tensor("act_ptr"), launch.tensor("w_ptr")
    H, I = w.shape[1], act.shape[1]
    weights = _expert_bytes(w, launch.tensor("s_ptr"), launch.tensor("b_ptr"), load)
    per_row = I * act.element_size() + H * 4 + 8  # act in, y out (fp32), routing weight and row index
    return weights + load.assignments * per_row, 2 * load.assignments * H * I


def _moe_combine(launch: Launch, load: Load) -> tuple[float, float]:
    y, out = launch.tensor("y_ptr"), launch.tensor("out_ptr")
    return load.assignments * y.shape[1] * 4 + _nbytes(out) + _nbytes(launch.tensor("topk_ids_ptr")), 0


_WORK = {
    "_rms_norm_kernel": _rms_norm,
    "_router_topk_kernel": _router_topk,
    "_write_kv_kernel": _write_kv,
    "_rope_write_kv_kernel": _rope_write_kv,
    "_paged_attention_kernel": _paged_attention,
    "_merge_splits_kernel": _merge_splits,
    "_route_kernel": _route,
    "_moe_gemm1_kernel": _moe_gemm1,
    "_moe_gemm2_kernel": _moe_gemm2,
    "_moe_combine_kernel": _moe_combine,
}
