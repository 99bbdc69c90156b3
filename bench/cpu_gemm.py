"""The CPU kernels' products of many tokens against torch's GEMM, in GFLOP/s (no checkpoint needed).

    python -m bench.cpu_gemm [--tokens 8 16 64 256 2048] [--repeat 3] [--out bench/results/cpu_gemm.json]

Flow: random weights at the shapes the CPU path multiplies (gpt-oss-20b's expert W1 and an attention projection,
the larger peer checkpoint's expert and unembedding, the small one's unembedding) -> per shape and token count, best
of --repeat timings of: the MXFP4 experts' product (cpu_native.matvec, packed weights), `kernels.linear` in bf16 and
in fp32 and, for an unembedding, `kernels.greedy_tokens` (bf16) as the engine calls them, and the baseline, torch's F.linear in fp32 on the
dequantized weight (MKL's sgemm) -> GFLOP/s and each one's ratio to the baseline -> JSON with the CPU and the native
kernels' instruction set.
"""

import argparse
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.cpu_decode_pieces import best_of
from bench.peer import cpu
from engine import kernels
from engine.kernels import cpu_native
from engine.weights.mxfp4 import dequantize_mxfp4

SHAPES = {  # name: (rows, K, mxfp4, most tokens): what the CPU path multiplies (an unembedding: the sampled rows)
    "gpt-oss-20b expert W1": (5760, 2880, True, 2048),
    "gpt-oss-20b q projection": (4096, 2880, False, 2048),
    "larger expert W1": (2048, 1024, True, 2048),
    "larger unembedding": (201088, 1024, False, 256),
    "small unembedding": (201088, 64, False, 256),
}
MAX_FLOP = 60e9  # a shape and token count above this much work per call is left out (minutes on 2 cores)


def measure(rows: int, k: int, mxfp4: bool, tokens: int, repeat: int, greedy: bool = False) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, k, generator=gen)
    if mxfp4:
        blocks = torch.randint(0, 256, (rows, k // 32, 16), dtype=torch.uint8, generator=gen)
        scales = torch.randint(118, 127, (rows, k // 32), dtype=torch.uint8, generator=gen)
        weight = dequantize_mxfp4(blocks, scales).float()
    else:
        weight = torch.randn(rows, k, generator=gen) * 0.05
    wb, xb = weight.bfloat16(), x.bfloat16()
    lib = cpu_native.library()
    runs = {"torch fp32 (baseline)": lambda: F.linear(x, weight)}
    if mxfp4 and lib is not None:
        xs = cpu_native.split_order(x)
        runs["mxfp4 experts"] = lambda: cpu_native.matvec(lib, xs, blocks, scales)
    else:
        runs["linear bf16"] = lambda: kernels.linear(xb, wb)
        runs["linear fp32"] = lambda: kernels.linear(x, weight)
        if greedy and kernels.greedy_tokens(xb, wb) is not None:  # the unembedding's, in a plain greedy batch
            runs["greedy tokens bf16"] = lambda: kernels.greedy_tokens(xb, wb)
    flop = 2 * rows * k * tokens
    seconds = {name: best_of(fn, repeat) for name, fn in runs.items()}
    base = seconds["torch fp32 (baseline)"]
    return {name: {"ms": s * 1e3, "gflops": flop / s / 1e9, "vs_baseline": base / s} for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8, 16, 64, 256, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_gemm.json")
    args = parser.parse_args()
    rows = []
    for name, (r, k, mxfp4, most) in SHAPES.items():
        for tokens in args.tokens:
            if 2 * r * k * tokens > MAX_FLOP or tokens > most:
                continue
            result = measure(r, k, mxfp4, tokens, args.repeat, greedy="unembedding" in name)
            rows.append({"shape": name, "rows": r, "k": k, "tokens": tokens, "runs": result})
            print(f"{name:28} [{r}, {k}] x {tokens:5} tokens: " + ", ".join(
                f"{n} {v['gflops']:.1f} GFLOP/s ({v['vs_baseline']:.2f}x)" for n, v in result.items()), flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "cpu_gemm", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "cpu": cpu(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
