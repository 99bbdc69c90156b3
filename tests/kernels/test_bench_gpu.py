"""Dry run of bench/gpu.py on CPU at tiny shapes (Triton kernels through the interpreter), so the GPU benchmark,
which only runs on a CUDA machine, cannot rot unnoticed: every check must pass and both result files appear."""

import json
import time

import torch

import bench.gpu as gpu

from ._util import triton_path


class CpuTimer:
    """Stands in for the CUDA-event timer: one wall-clock run."""

    def __call__(self, fn, iters=None, warmup=0):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


@triton_path
def test_bench_gpu_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "DEVICE", "cpu")
    shapes = gpu.Shapes(hidden=64, intermediate=32, experts=4, top_k=2, q_heads=4, kv_heads=2, head_dim=16,
                        window=8, block_size=4, layers=2, vocab=512)
    report = gpu.Report("2026-01-01T00:00:00", "CPU interpreter", torch.__version__, "interpreted")
    report.shapes = gpu.asdict(shapes)
    timer, gen = CpuTimer(), torch.Generator().manual_seed(0)
    gpu.measure_card(report, timer, copy_bytes=1 << 20, n=64)
    gpu.bench_small_ops(report, timer, shapes, gen, token_counts=(1, 5), max_pos=64)
    cases = [("decode", [9, 3], [1, 1]), ("prefill", [12], [12]), ("mixed", [10, 5], [4, 1])]
    gpu.bench_attention(report, timer, shapes, gen, cases=cases)
    gpu.bench_moe(report, timer, shapes, [1, 7], gen)
    steps = ((1, False), (3, False), (6, True))
    gpu.gpu_launches.bench_launches(report, timer, shapes, gpu.random_experts(shapes, gen), "cpu", gen, steps, context=9)
    gpu.bench_model_decode(report, timer, shapes, batches=(1, 3), context=9)
    stem = gpu.write_results(report, tmp_path)

    assert report.checks and all(check.passed for check in report.checks), [c for c in report.checks if not c.passed]
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert {t["name"] for t in saved["timings"]} == {
        "rms_norm + residual", "rope_and_write_kv", "router_topk", "paged_attention", "moe_mxfp4", "model decode"}
    assert [(d["batch"], d["graph_tok_s"]) for d in saved["decode"]] == [(1, None), (3, None)]  # no CUDA: eager
    assert all(d["eager_tok_s"] > 0 and d["floor_tok_s"] > 0 for d in saved["decode"])
    markdown = stem.with_suffix(".md").read_text()
    assert "| moe_mxfp4 | torch baseline |" in markdown and "experts=4" in markdown
    assert "## Whole-model decode" in markdown and "| 3 | 9 |" in markdown
    kernels = {t["kernel"] for t in saved["launches"]}
    assert kernels == {"_rms_norm_kernel", "_router_topk_kernel", "_route_kernel", "_moe_gemm1_kernel",
                       "_moe_gemm2_kernel", "_moe_combine_kernel", "_write_kv_kernel", "_rope_write_kv_kernel",
                       "_paged_attention_kernel"}  # every kernel (no key splits off CUDA: no merge)
    assert {t["step"] for t in saved["launches"]} == {"decode T=1 ctx=9", "decode T=3 ctx=9", "prefill T=6"}
    assert all(t["measured_us"] > 0 and t["predicted_us"] > 0 for t in saved["launches"])
    assert "| decode T=3 ctx=9 | moe_mxfp4 | _moe_gemm1_kernel |" in markdown
    assert stem.name == "2026-01-01-cpu-interpreter"
