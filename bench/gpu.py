"""One-shot GPU benchmark of the kernels at gpt-oss-120b shapes: `python -m bench.gpu` on a CUDA machine.

Flow: measure the card (copy GB/s, bf16 matmul TFLOP/s) -> check every Triton kernel against its torch ref on
random data at real shapes -> time kernels, refs and the torch MoE baseline (median of CUDA-event timings, L2
flushed before each run) -> write bench/results/<date>-<device>.json and .md.
Then every launch of one layer, at decode T = 1..256 and prefill chunks, timed alone next to its roofline prediction
(bench.gpu_launches: the launches come from the ops' own plans, the predictions from bench.roofline). Then
whole-model decode at gpt-oss-120b shapes with random weights (MXFP4 experts, ~65 GB): tokens/s at batch 1, 8,
64 and 256, eager and with CUDA graphs, next to the bandwidth floor (`bench_model_decode`).
"""

import argparse
import datetime
import json
import math
import platform
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench import gpu_launches
from engine.kernels import attention, moe, norm, rope, router
from engine.weights.mxfp4 import dequantize_mxfp4

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEVICE = "cuda"  # tests/kernels/test_bench_gpu.py swaps in "cpu" to dry-run this script at tiny shapes

# Attention cases: (name, seq_lens, q_lens); each runs with the sliding window and with full attention.
ATTENTION_CASES = [
    ("decode B=1 len=8192", [8192], [1]),
    ("decode B=64 len=4096", [4096] * 64, [1] * 64),
    ("decode B=64 lens 1..8191", torch.randint(1, 8192, (64,), generator=torch.Generator().manual_seed(1)).tolist(),
     [1] * 64),
    ("prefill 1x4096", [4096], [4096]),
    ("mixed 4 prefills x512 + 60 decodes", [512] * 4 + [2048] * 60, [512] * 4 + [1] * 60),
]


@dataclass(frozen=True)
class Shapes:
    """gpt-oss-120b: one layer's shapes (the whole model's for the decode timing)."""

    hidden: int = 2880  # H
    intermediate: int = 2880  # I, per expert
    experts: int = 128  # E
    top_k: int = 4  # K
    q_heads: int = 64  # Hq
    kv_heads: int = 8  # KV
    head_dim: int = 64  # D
    window: int = 128  # sliding window of the even layers
    block_size: int = 16  # KV-cache tokens per block
    eps: float = 1e-5
    layers: int = 36  # whole-model decode only
    vocab: int = 201088


@dataclass
class Check:
    """One kernel-vs-ref comparison."""

    name: str
    max_abs_err: float
    max_ref: float  # largest |ref| value: the error is judged relative to it
    passed: bool


@dataclass
class Timing:
    """One timed op; bytes and flops are the op's unique traffic and useful work, not what the kernel issues."""

    name: str
    impl: str  # "triton", "torch ref", "torch baseline", ...
    shape: str
    ms: float  # median
    bytes: int
    flops: int
    gbps: float = 0.0
    tflops: float = 0.0
    bw_fraction: float = 0.0  # of the measured copy bandwidth
    flop_fraction: float = 0.0  # of the measured bf16 matmul rate


@dataclass
class Report:
    date: str
    device: str
    torch: str
    triton: str
    shapes: dict = field(default_factory=dict)  # asdict(Shapes) of the run
    copy_gbps: float = 0.0
    matmul_tflops: float = 0.0
    checks: list[Check] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    decode: list["DecodeResult"] = field(default_factory=list)
    launches: list[gpu_launches.LaunchTiming] = field(default_factory=list)  # each launch vs its roofline


# ------------------------------------------------------------------------------------------------------- timing


class Timer:
    """Median of CUDA-event timings; a 256 MiB buffer is overwritten before each run so no run reads warm L2."""

    def __init__(self, iters: int):
        self.iters = iters
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE)

    def __call__(self, fn: Callable[[], object], iters: int | None = None, warmup: int = 3) -> float:
        iters = iters or self.iters
        for _ in range(warmup):
            fn()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        torch.cuda.synchronize()
        for start, end in events:
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)


def measure_card(report: Report, timer: Timer, copy_bytes: int = 1 << 30, n: int = 8192) -> None:
    """Copy bandwidth (1 GiB device-to-device, read + write counted) and a bf16 8192^3 matmul."""
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), iters=20)
    report.copy_gbps = 2 * src.numel() / ms / 1e6
    del src, dst
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    ms = timer(lambda: a @ b, iters=20)
    report.matmul_tflops = 2 * n**3 / ms / 1e9


def add_timing(report: Report, timer: Timer, name, impl, shape, fn, nbytes, flops, iters=None) -> None:
    record_timing(report, name, impl, shape, timer(fn, iters), nbytes, flops)


def record_timing(report: Report, name, impl, shape, ms: float, nbytes, flops) -> None:
    t = Timing(name, impl, shape, ms, int(nbytes), int(flops))
    t.gbps = nbytes / ms / 1e6
    t.tflops = flops / ms / 1e9
    t.bw_fraction = t.gbps / report.copy_gbps if report.copy_gbps else 0.0
    t.flop_fraction = t.tflops / report.matmul_tflops if report.matmul_tflops else 0.0
    report.timings.append(t)
    print(f"  {name:<34} {impl:<15} {shape:<28} {ms:9.4f} ms {t.gbps:8.1f} GB/s {t.tflops:7.2f} TFLOP/s", flush=True)


def add_check(report: Report, name: str, out: torch.Tensor, ref: torch.Tensor, rel_tol: float) -> None:
    err = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    ok = bool(math.isfinite(err) and err <= rel_tol * max(scale, 1e-6))
    report.checks.append(Check(name, err, scale, ok))
    print(f"  check {name:<40} max err {err:.3e} (|ref| max {scale:.3e})  {'ok' if ok else 'FAILED'}", flush=True)


# ---------------------------------------------------------------------------------------------------------- MoE


def random_experts(s: Shapes, gen: torch.Generator) -> dict:
    """All E experts as random MXFP4 (every FP4 code; scales 2^-8..2^-5 keep activations in a sane range)."""
    E, H, I = s.experts, s.hidden, s.intermediate

    def packed(rows, cols):
        blocks = torch.randint(0, 256, (E, rows, cols // 32, 16), dtype=torch.uint8, device=DEVICE, generator=gen)
        scales = torch.randint(119, 123, (E, rows, cols // 32), dtype=torch.uint8, device=DEVICE, generator=gen)
        return blocks, scales

    w1_blocks, w1_scales = packed(2 * I, H)
    w2_blocks, w2_scales = packed(H, I)
    b1 = torch.randn(E, 2 * I, device=DEVICE, generator=gen).bfloat16()
    b2 = torch.randn(E, H, device=DEVICE, generator=gen).bfloat16()
    return dict(w1_blocks=w1_blocks, w1_scales=w1_scales, b1=b1, w2_blocks=w2_blocks, w2_scales=w2_scales, b2=b2)


def random_routing(T: int, s: Shapes, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(T, s.experts, device=DEVICE, generator=gen)
    return router.router_topk_ref(logits, s.top_k)


def moe_torch_baseline(x, topk_ids, topk_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2,
                       swiglu_limit=7.0, alpha=1.702):
    """What an engine without an MXFP4 kernel does: per active expert, dequantize to bf16 and run bf16 matmuls."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in topk_ids.unique().tolist():
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        h = x[token] @ dequantize_mxfp4(w1_blocks[e], w1_scales[e], torch.bfloat16).T + b1[e]
        act = moe._swiglu_ref(h.float(), swiglu_limit, alpha).bfloat16()
        y = act @ dequantize_mxfp4(w2_blocks[e], w2_scales[e], torch.bfloat16).T + b2[e]
        out.index_add_(0, token, y.float() * topk_weights[token, slot, None])
    return out.to(x.dtype)


def bench_moe(report: Report, timer: Timer, s: Shapes, token_counts: list[int], gen: torch.Generator) -> None:
    experts = random_experts(s, gen)
    H, I = s.hidden, s.intermediate
    expert_bytes = (2 * I * H + H * I) * 17 // 32 + (2 * I + H) * 2  # packed 4.25 bits/weight + bf16 biases
    for T in token_counts:
        x = torch.randn(T, H, device=DEVICE, generator=gen).bfloat16()
        ids, weights = random_routing(T, s, gen)
        args = (x, ids, weights, *experts.values())
        if T <= 64:
            add_check(report, f"moe_mxfp4 T={T}", moe.moe_mxfp4(*args), moe.moe_mxfp4_ref(*args), 2e-2)
        active = ids.unique().numel()
        nbytes = active * expert_bytes + 2 * x.numel() * 2
        flops = 2 * T * s.top_k * 3 * H * I
        shape = f"T={T} active experts={active}"
        add_timing(report, timer, "moe_mxfp4", "triton", shape, lambda: moe.moe_mxfp4(*args), nbytes, flops)
        add_timing(report, timer, "moe_mxfp4", "torch baseline", shape, lambda: moe_torch_baseline(*args),
                   nbytes, flops, iters=5)
    del experts


# ---------------------------------------------------------------------------------------------------- attention


def paged_batch(s: Shapes, seq_lens: list[int], q_lens: list[int], window: int | None, gen: torch.Generator):
    """Random cache and queries; block ids shuffled so sequences are not contiguous. -> paged_attention args."""
    blocks = [-(-n // s.block_size) for n in seq_lens]
    cache = torch.randn(2, 1 + sum(blocks), s.block_size, s.kv_heads, s.head_dim, device=DEVICE, generator=gen)
    cache = cache.bfloat16()
    ids = (torch.randperm(sum(blocks), device=DEVICE, generator=gen) + 1).int()
    block_table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=DEVICE)
    start = 0
    for b, n in enumerate(blocks):
        block_table[b, :n] = ids[start : start + n]
        start += n
    q = torch.randn(sum(q_lens), s.q_heads, s.head_dim, device=DEVICE, generator=gen).bfloat16()
    sinks = torch.randn(s.q_heads, device=DEVICE, generator=gen)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, cache, block_table, seq, qsl, sinks, window, 1 / math.sqrt(s.head_dim)


def attention_work(s: Shapes, seq_lens, q_lens, window) -> tuple[int, int]:
    """(unique bytes: q, out and every visible K/V row once; flops: 4 * Hq * D per visible (query, key) pair)."""
    pairs = keys = 0
    for n, q in zip(seq_lens, q_lens):
        first_query = n - q
        pairs += sum(min(p + 1, window or p + 1) for p in range(first_query, n))
        keys += n - max(0, first_query - window + 1) if window else n
    kv_bytes = keys * s.kv_heads * s.head_dim * 2 * 2
    q_bytes = sum(q_lens) * s.q_heads * s.head_dim * 2 * 2
    return kv_bytes + q_bytes, 4 * s.q_heads * s.head_dim * pairs


def bench_attention(report: Report, timer: Timer, s: Shapes, gen: torch.Generator, cases=ATTENTION_CASES):
    for window in (s.window, None):
        for name, seq_lens, q_lens in cases:
            args = paged_batch(s, seq_lens, q_lens, window, gen)
            label = f"{name} {'window ' + str(window) if window else 'full'}"
            if sum(q_lens) <= 4096:
                add_check(report, f"paged_attention {label}", attention.paged_attention(*args),
                          attention.paged_attention_ref(*args), 2e-2)
            nbytes, flops = attention_work(s, seq_lens, q_lens, window)
            add_timing(report, timer, "paged_attention", "triton", label, lambda: attention.paged_attention(*args),
                       nbytes, flops)
            add_timing(report, timer, "paged_attention", "torch ref", label,
                       lambda: attention.paged_attention_ref(*args), nbytes, flops, iters=3)


# ------------------------------------------------------------------------------------------ norm, rope, router


def bench_norm(report: Report, timer: Timer, s: Shapes, T: int, gen: torch.Generator) -> None:
    weight = (1 + 0.1 * torch.randn(s.hidden, device=DEVICE, generator=gen)).bfloat16()
    x, res = (torch.randn(T, s.hidden, device=DEVICE, generator=gen).bfloat16() for _ in range(2))
    add_check(report, f"rms_norm T={T}", norm.rms_norm(x, weight, s.eps, res)[0],
              norm.rms_norm_ref(x, weight, s.eps, res)[0], 1e-2)
    for impl, fn in (("triton", norm.rms_norm), ("torch ref", norm.rms_norm_ref)):
        add_timing(report, timer, "rms_norm + residual", impl, f"T={T} H={s.hidden}",
                   lambda fn=fn: fn(x, weight, s.eps, res), 4 * x.numel() * 2, 4 * x.numel())


def bench_rope(report: Report, timer: Timer, s: Shapes, T: int, cos_sin: torch.Tensor, gen) -> None:
    q = torch.randn(T, s.q_heads, s.head_dim, device=DEVICE, generator=gen).bfloat16()
    k, v = (torch.randn(T, s.kv_heads, s.head_dim, device=DEVICE, generator=gen).bfloat16() for _ in range(2))
    positions = torch.randint(0, cos_sin.shape[0], (T,), device=DEVICE, generator=gen)
    num_blocks = -(-T // s.block_size) + 1
    slots = torch.randperm(num_blocks * s.block_size, device=DEVICE, generator=gen)[:T]
    caches = [torch.zeros(2, num_blocks, s.block_size, s.kv_heads, s.head_dim, device=DEVICE).bfloat16()
              for _ in range(2)]
    q_rot, _ = rope.rope_and_write_kv(q, k, v, positions, cos_sin, caches[0], slots)
    q_ref, _ = rope.rope_and_write_kv_ref(q, k, v, positions, cos_sin, caches[1], slots)
    add_check(report, f"rope_and_write_kv q T={T}", q_rot, q_ref, 1e-2)
    add_check(report, f"rope_and_write_kv cache T={T}", caches[0], caches[1], 1e-2)
    nbytes = (2 * q.numel() + 4 * k.numel()) * 2 + T * s.head_dim * 4  # q, k in and out, v in, k/v out, cos/sin
    for impl, fn in (("triton", rope.rope_and_write_kv), ("torch ref", rope.rope_and_write_kv_ref)):
        add_timing(report, timer, "rope_and_write_kv", impl, f"T={T}",
                   lambda fn=fn: fn(q, k, v, positions, cos_sin, caches[0], slots), nbytes, 0)


def bench_router(report: Report, timer: Timer, s: Shapes, T: int, gen: torch.Generator) -> None:
    logits = torch.randn(T, s.experts, device=DEVICE, generator=gen)
    ids, weights = router.router_topk(logits, s.top_k)
    ids_ref, weights_ref = router.router_topk_ref(logits, s.top_k)
    mismatched = int((ids != ids_ref).sum())
    report.checks.append(Check(f"router_topk ids T={T}", float(mismatched), float(s.experts), mismatched == 0))
    add_check(report, f"router_topk weights T={T}", weights, weights_ref, 1e-5)
    nbytes = logits.numel() * 4 + T * s.top_k * 8
    for impl, fn in (("triton", router.router_topk), ("torch ref", router.router_topk_ref)):
        add_timing(report, timer, "router_topk", impl, f"T={T} E={s.experts}", lambda fn=fn: fn(logits, s.top_k),
                   nbytes, 0)


def bench_small_ops(report: Report, timer: Timer, s: Shapes, gen, token_counts=(1, 64, 4096), max_pos=131072):
    cos_sin = rope.yarn_cos_sin_cache(s.head_dim, max_pos, 150000.0, 32.0, 4096, 32.0, 1.0).to(DEVICE)
    for T in token_counts:
        bench_norm(report, timer, s, T, gen)
        bench_rope(report, timer, s, T, cos_sin, gen)
        bench_router(report, timer, s, T, gen)


# --------------------------------------------------------------------------------------------- whole model


def model_config(s: Shapes):
    from engine.model.config import FULL, SLIDING, GptOssConfig  # noqa: PLC0415

    return GptOssConfig(
        num_hidden_layers=s.layers, num_experts=s.experts, experts_per_token=s.top_k, hidden_size=s.hidden,
        intermediate_size=s.intermediate, num_attention_heads=s.q_heads, num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim, vocab_size=s.vocab, sliding_window=s.window,
        layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(s.layers)))


def random_model(s: Shapes, gen: torch.Generator):
    """The kernel model (packed MXFP4 experts, bf16 elsewhere) with random weights made on the device, one tensor at
    a time (gpt-oss-120b: about 65 GB)."""
    from engine.model.kernel_model import use_kernels  # noqa: PLC0415
    from engine.model.reference import Transformer  # noqa: PLC0415

    config = model_config(s)
    with torch.device("meta"):
        model = use_kernels(Transformer(config))
    weights = {}
    for name, meta in model.state_dict().items():
        if name.endswith("_scales"):
            weights[name] = torch.randint(119, 123, meta.shape, dtype=torch.uint8, device=DEVICE, generator=gen)
        elif meta.dtype == torch.uint8:
            weights[name] = torch.randint(0, 256, meta.shape, dtype=torch.uint8, device=DEVICE, generator=gen)
        elif name.endswith("norm.weight"):
            weights[name] = torch.ones(meta.shape, dtype=torch.bfloat16, device=DEVICE)
        else:
            scale = 1.0 if name == "embed.weight" else meta.shape[-1] ** -0.5
            weights[name] = (torch.randn(meta.shape, device=DEVICE, generator=gen) * scale).bfloat16()
    return Transformer.load(model, weights), config


def decode_inputs(runner, config, batch: int, context: int):
    """A decode step of `batch` sequences holding `context` tokens each (own blocks per sequence and group)."""
    from engine.model_runner import GroupInputs, StepInputs  # noqa: PLC0415

    bs = runner.layout.block_size
    per_seq = -(-(context + 1) // bs)
    groups, next_block = [], 1  # block 0 is the null block
    for _ in runner.layout.windows:
        table = torch.arange(next_block, next_block + batch * per_seq, dtype=torch.int32).view(batch, per_seq)
        next_block += batch * per_seq
        slots = table[:, context // bs].long() * bs + context % bs
        groups.append(GroupInputs(slots.to(DEVICE), table.to(DEVICE)))
    return StepInputs(
        input_ids=torch.randint(0, config.vocab_size, (batch,), device=DEVICE),
        positions=torch.full((batch,), context, dtype=torch.long, device=DEVICE),
        seq_lens=torch.full((batch,), context + 1, dtype=torch.int32, device=DEVICE),
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device=DEVICE), groups=groups,
        logits_indices=torch.arange(batch, device=DEVICE), sampled=[])


def decode_step_bytes(s: Shapes, batch: int, context: int) -> tuple[int, int]:
    """(bytes a decode step must read at least, useful flops): every dense weight once, the experts the batch hits
    (uniform routing: E (1 - (1 - K/E)^B) per layer), each sequence's visible KV, the embedding rows."""
    H, I, E, K = s.hidden, s.intermediate, s.experts, s.top_k
    attention = (H * (s.q_heads + 2 * s.kv_heads) * s.head_dim + s.q_heads * s.head_dim * H) * 2
    expert = (3 * I * H) * 17 // 32 + 3 * I * 2  # MXFP4 + scales + bf16 biases
    hit = E * (1 - (1 - K / E) ** batch)
    kv_row = 2 * s.kv_heads * s.head_dim * 2
    kv = sum(batch * (context + 1 if i % 2 else min(context + 1, s.window)) * kv_row for i in range(s.layers))
    per_layer = attention + hit * expert + H * E * 2
    nbytes = int(s.layers * per_layer + kv + s.vocab * H * 2 + batch * H * 2)
    active_params = s.layers * (attention // 2 + K * 3 * I * H) + s.vocab * H
    return nbytes, 2 * active_params * batch


@dataclass
class DecodeResult:
    batch: int
    context: int
    eager_tok_s: float
    graph_tok_s: float | None
    floor_tok_s: float  # the bytes a step must read at the measured copy bandwidth
    graph_matches_eager: bool | None  # same greedy tokens from the graph replay as from the eager forward


def bench_model_decode(report: Report, timer: Timer, s: Shapes, batches=(1, 8, 64, 256), context: int = 256,
                       graphs: bool = True) -> None:
    """Whole-model decode steps at `s` (gpt-oss-120b by default) with random weights: forward + logits + argmax,
    eager and replaying CUDA graphs captured at the same batch sizes, next to the bandwidth floor."""
    from engine.kv_cache_manager import KVCacheLayout  # noqa: PLC0415
    from engine.model_runner import ModelRunner  # noqa: PLC0415

    gen = torch.Generator(device=DEVICE).manual_seed(1)
    model, config = random_model(s, gen)
    layout = KVCacheLayout.for_model(config, s.block_size)
    num_blocks = 1 + len(layout.windows) * max(batches) * -(-(context + 1) // s.block_size)
    runner = ModelRunner(model, layout, num_blocks, torch.bfloat16, torch.device(DEVICE))
    steps = {b: decode_inputs(runner, config, b, context) for b in batches}

    def step(b):
        return model.compute_logits(runner.forward(steps[b])).argmax(-1)

    with torch.inference_mode():
        eager = {b: (timer(lambda b=b: step(b)), step(b)) for b in batches}
        replayed = {}
        if graphs and torch.device(DEVICE).type == "cuda":
            runner.capture_decode_graphs(-(-(context + 1) // s.block_size), batches)
            replayed = {b: (timer(lambda b=b: step(b)), step(b)) for b in batches}
    for b in batches:
        nbytes, flops = decode_step_bytes(s, b, context)
        ms, tokens = eager[b]
        shape = f"B={b} ctx={context}"
        record_timing(report, "model decode", "triton eager", shape, ms, nbytes, flops)
        result = DecodeResult(b, context, 1e3 * b / ms, None, 1e3 * b / (nbytes / report.copy_gbps / 1e6), None)
        if b in replayed:
            gms, gtokens = replayed[b]
            record_timing(report, "model decode", "triton + CUDA graphs", shape, gms, nbytes, flops)
            result.graph_tok_s, result.graph_matches_eager = 1e3 * b / gms, bool(torch.equal(gtokens, tokens))
        report.decode.append(result)
        print(f"decode B={b}: eager {result.eager_tok_s:.0f} tok/s, graphs "
              f"{result.graph_tok_s or float('nan'):.0f} tok/s, floor {result.floor_tok_s:.0f} tok/s", flush=True)


# ------------------------------------------------------------------------------------------------------ output


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def write_results(report: Report, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{report.date[:10]}-{slug(report.device)}"
    stem.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2))
    lines = [
        f"# Kernel benchmark, {report.device}, {report.date}",
        "",
        f"torch {report.torch}, triton {report.triton}. Measured: copy {report.copy_gbps:.0f} GB/s, "
        f"bf16 matmul {report.matmul_tflops:.0f} TFLOP/s. Shapes: "
        + ", ".join(f"{k}={v}" for k, v in report.shapes.items())
        + ". bf16 activations; medians of CUDA-event timings with L2 flushed; bytes and flops count unique "
        "traffic and useful work.",
        "",
        "## Checks (Triton kernel vs torch ref, random data)",
        "",
        "| check | max abs err | max abs ref | result |",
        "| --- | ---: | ---: | --- |",
        *(f"| {c.name} | {c.max_abs_err:.3e} | {c.max_ref:.3e} | {'ok' if c.passed else '**FAILED**'} |"
          for c in report.checks),
        "",
        "## Timings",
        "",
        "| op | impl | shape | ms | GB/s | % copy BW | TFLOP/s | % matmul |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {t.name} | {t.impl} | {t.shape} | {t.ms:.4f} | {t.gbps:.0f} | {100 * t.bw_fraction:.1f} | "
          f"{t.tflops:.2f} | {100 * t.flop_fraction:.1f} |" for t in report.timings),
        "",
        *gpu_launches.markdown(report),
        "## Whole-model decode (random weights, forward + logits + argmax per step)",
        "",
        "| batch | context | eager tok/s | CUDA graphs tok/s | graphs = eager tokens | bandwidth floor tok/s |",
        "| ---: | ---: | ---: | ---: | --- | ---: |",
        *(f"| {d.batch} | {d.context} | {d.eager_tok_s:.0f} | "
          f"{'-' if d.graph_tok_s is None else f'{d.graph_tok_s:.0f}'} | "
          f"{'-' if d.graph_matches_eager is None else ('yes' if d.graph_matches_eager else '**no**')} | "
          f"{d.floor_tok_s:.0f} |" for d in report.decode),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON and markdown results")
    parser.add_argument("--iters", type=int, default=50, help="timed runs per kernel (the median is reported)")
    parser.add_argument("--moe-tokens", type=int, nargs="+", default=[1, 8, 64, 512, 4096],
                        help="token counts for the MoE timings")
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8, 64, 256],
                        help="batch sizes of the whole-model decode timing (empty list: skip it)")
    parser.add_argument("--decode-context", type=int, default=256, help="tokens in each sequence's KV cache")
    parser.add_argument("--launch-steps", type=int, nargs="*", default=[t for t, _ in gpu_launches.STEPS],
                        help="tokens per step of the per-launch roofline timings: up to 256 a decode step of that many "
                        "sequences, more one prefill chunk (empty list: skip them)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu needs a CUDA device and none is visible (torch.cuda.is_available() is False); "
              "run it on a GPU machine with the CUDA build of torch.", file=sys.stderr)
        return 2
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False
    report = Report(datetime.datetime.now().isoformat(timespec="seconds"), torch.cuda.get_device_name(),
                    torch.__version__, triton.__version__)
    print(f"{report.device} ({platform.node()}), torch {report.torch}, triton {report.triton}", flush=True)
    timer, shapes, gen = Timer(args.iters), Shapes(), torch.Generator(device=DEVICE).manual_seed(0)
    report.shapes = asdict(shapes)
    measure_card(report, timer)
    print(f"copy {report.copy_gbps:.0f} GB/s, bf16 matmul {report.matmul_tflops:.0f} TFLOP/s", flush=True)
    bench_small_ops(report, timer, shapes, gen)
    bench_attention(report, timer, shapes, gen)
    bench_moe(report, timer, shapes, args.moe_tokens, gen)
    if args.launch_steps:
        steps = [(t, t > 256) for t in args.launch_steps]
        gpu_launches.bench_launches(report, timer, shapes, random_experts(shapes, gen), DEVICE, gen, steps)
    if args.decode_batches:
        torch.cuda.empty_cache()
        bench_model_decode(report, timer, shapes, args.decode_batches, args.decode_context)
    stem = write_results(report, args.out)
    print(f"wrote {stem}.json and {stem}.md")
    decode_ok = all(d.graph_matches_eager is not False for d in report.decode)
    return 0 if all(c.passed for c in report.checks) and decode_ok else 1


if __name__ == "__main__":
    sys.exit(main())
