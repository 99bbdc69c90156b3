"""Every kernel launch of one gpt-oss layer, timed alone on the GPU next to its roofline prediction (run by bench.gpu).

Flow: for each step shape (decode T = 1 .. 256 with a long cache, prefill chunks) -> `step_launches`: random inputs
at the model's shapes, each op's own plan (engine.kernels.*.plan_*: the launches the op would make here) -> run the
whole step once in order (every launch then finds valid inputs) -> time each launch alone -> `LaunchTiming`:
measured us beside bench.roofline's predicted us for this GPU (its datasheet figures when it is an H100 SXM, H200 or
B200, else the copy bandwidth and matmul rate bench.gpu measured) -> rows of the results' markdown.
"""

from dataclasses import dataclass

import torch

from bench import roofline
from bench.roofline import GPU, Load, PlannedLaunch
from engine.kernels import attention, moe, norm, rope, router

STEPS = ((1, False), (8, False), (64, False), (256, False), (2048, True), (8192, True))  # (tokens, prefill)


@dataclass
class LaunchTiming:
    """One launch of an op's plan, timed alone, and what the roofline predicted for it."""

    step: str  # "decode T=8 ctx=4096" or "prefill T=2048"
    op: str  # the public op that planned it
    kernel: str
    config: str  # grid and meta-parameters
    measured_us: float  # median, L2 flushed before each run
    predicted_us: float  # max(bytes / bandwidth, flops / bf16 peak) of `roofline_gpu`
    bound: str  # which limit the prediction hit: "memory" or "compute"
    bytes: int
    flops: int


def roofline_gpu(report) -> GPU:
    """The datasheet entry of this GPU, or one made of the copy bandwidth and matmul rate measured in this run."""
    known = roofline.gpu_named(report.device)
    if known:
        return known
    sms = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 1
    return GPU(f"{report.device} (measured)", 0, sms, report.copy_gbps * 1e9, report.matmul_tflops * 1e12,
               "copy bandwidth and bf16 matmul rate measured by bench.gpu")


def bench_launches(report, timer, s, experts: dict, device: str, gen: torch.Generator, steps=STEPS,
                   context: int = 4096) -> None:
    """Time every launch of every step shape; append LaunchTiming rows to report.launches."""
    gpu = roofline_gpu(report)
    print(f"per-launch timings against the roofline of {gpu.name}", flush=True)
    for tokens, prefill in steps:
        step = f"prefill T={tokens}" if prefill else f"decode T={tokens} ctx={context}"
        planned = step_launches(s, tokens, prefill, context, experts, device, gen)
        for p in planned:  # once in order: each launch's inputs are then in place
            p.launch()
        for p in planned:
            report.launches.append(_timed(timer, step, p, gpu))


def _timed(timer, step: str, p: PlannedLaunch, gpu: GPU) -> LaunchTiming:
    w = roofline.work(p.launch, p.load)
    ms = timer(p.launch)
    config = f"grid {p.launch.grid} " + " ".join(f"{k}={v}" for k, v in p.launch.meta.items())
    bound = "compute" if w.compute_seconds(gpu) > w.memory_seconds(gpu) else "memory"
    t = LaunchTiming(step, p.op, p.launch.name, config, 1e3 * ms, 1e6 * w.seconds(gpu), bound, int(w.bytes),
                     int(w.flops))
    print(f"  {step:<24} {t.kernel:<26} {t.measured_us:10.2f} us measured {t.predicted_us:10.2f} us predicted "
          f"({t.measured_us / max(t.predicted_us, 1e-9):5.2f}x, {bound})", flush=True)
    return t


def step_launches(s, tokens: int, prefill: bool, context: int, experts: dict, device: str,
                  gen: torch.Generator) -> list[PlannedLaunch]:
    """One layer's launches for a step, from the ops' plans, on random bf16 inputs at shapes `s` (bench.gpu.Shapes)."""
    T, H, bf16 = tokens, s.hidden, dict(dtype=torch.bfloat16, device=device)
    x, res = torch.randn(T, H, device=device, generator=gen).to(**bf16), torch.randn(T, H, device=device).to(**bf16)
    _, launches = norm.plan_rms_norm(x, torch.ones(H, **bf16), s.eps, res)
    planned = [PlannedLaunch("rms_norm", launch, Load()) for launch in launches]
    logits = torch.randn(T, s.experts, device=device, generator=gen).to(**bf16)
    (ids, weights), launches = router.plan_router_topk(logits, s.top_k)
    planned += [PlannedLaunch("router_topk", launch, Load()) for launch in launches]
    ids, weights = router.router_topk_ref(logits, s.top_k)  # data for the MoE plan below (the launch above is timed)
    _, launches = moe.plan_moe_mxfp4(x, ids, weights, *experts.values())
    load = Load(active_experts=ids.unique().numel(), assignments=ids.numel())
    planned += [PlannedLaunch("moe_mxfp4", launch, load) for launch in launches]
    return planned + _attention_launches(s, T, prefill, context, device, gen)


def _attention_launches(s, T: int, prefill: bool, context: int, device: str, gen) -> list[PlannedLaunch]:
    """write_kv, rope_and_write_kv, and paged_attention over a sliding-window and a full layer: B = T sequences of
    context + 1 tokens (decode) or one of T (prefill), each in its own shuffled blocks."""
    B, seq_len = (1, T) if prefill else (T, context + 1)
    per_seq = -(-seq_len // s.block_size)
    bf16 = dict(dtype=torch.bfloat16, device=device)
    cache = torch.randn(2, 1 + B * per_seq, s.block_size, s.kv_heads, s.head_dim, device=device, generator=gen)
    cache = cache.to(**bf16)
    table = (torch.randperm(B * per_seq, device=device, generator=gen) + 1).int().view(B, per_seq)
    positions = torch.arange(seq_len - T // B, seq_len, device=device).repeat(B)  # the queries' positions
    slots = (table.gather(1, (positions.view(B, -1) // s.block_size)).long() * s.block_size
             + positions.view(B, -1) % s.block_size).view(-1)
    q = torch.randn(T, s.q_heads, s.head_dim, device=device, generator=gen).to(**bf16)
    k, v = (torch.randn(T, s.kv_heads, s.head_dim, device=device, generator=gen).to(**bf16) for _ in range(2))
    planned = [PlannedLaunch("write_kv", launch, Load()) for launch in attention.plan_write_kv(cache, k, v, slots)]
    cos_sin = rope.yarn_cos_sin_cache(s.head_dim, seq_len, 150000.0, 32.0, 4096, 32.0, 1.0).to(device)
    _, launches = rope.plan_rope_and_write_kv(q, k, v, positions, cos_sin, cache, slots)
    planned += [PlannedLaunch("rope_and_write_kv", launch, Load()) for launch in launches]
    seq_lens = torch.full((B,), seq_len, dtype=torch.int32, device=device)
    qsl = torch.arange(B + 1, dtype=torch.int32, device=device) * (T // B)
    sinks = torch.randn(s.q_heads, device=device, generator=gen)
    for window in (s.window, None):
        _, launches = attention.plan_paged_attention(q, cache, table, seq_lens, qsl, sinks, window, s.head_dim**-0.5)
        load = roofline.attention_load([seq_len] * B, [T // B] * B, window)
        planned += [PlannedLaunch("paged_attention", launch, load) for launch in launches]
    return planned


def markdown(report) -> list[str]:
    """The per-launch section of bench.gpu's results."""
    if not report.launches:
        return []
    gpu = roofline_gpu(report)
    return [
        f"## Each launch alone vs the roofline of {gpu.name} (predicted: {gpu.source})",
        "",
        "| step | op | kernel | launch | measured us | predicted us | measured / predicted | bound |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
        *(f"| {t.step} | {t.op} | {t.kernel} | {t.config} | {t.measured_us:.2f} | {t.predicted_us:.2f} | "
          f"{t.measured_us / max(t.predicted_us, 1e-9):.2f} | {t.bound} |" for t in report.launches),
        "",
    ]
