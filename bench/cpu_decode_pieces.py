"""Where a batch-1 decode step of gpt-oss-20b's shapes spends its time on CPU, piece by piece (no checkpoint needed).

    python -m bench.cpu_decode_pieces [--dtype bfloat16] [--repeat 5]

Flow: random weights at gpt-oss-20b's shapes for one layer (packed MXFP4 experts, bf16 attention) and the
unembedding -> each piece of one decode token timed alone (best of --repeat): the 4 active experts' W1 and W2
through moe_cpu.linear_mxfp4 (and, for comparison, W1 on the tiled path, decoded by torch without the native
kernels, and as a dense bf16 matrix: calls/step 0, not summed), the attention projections, the router and the
unembedding through engine.kernels.linear as the engine runs them -> per-step estimate (24 layers) next to the
bytes each piece reads, so a slow piece shows as a low GB/s.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from engine import kernels
from engine.kernels import moe_cpu
from engine.weights.mxfp4 import dequantize_mxfp4

H, I, E, K, Q, KV, D, V, LAYERS = 2880, 2880, 32, 4, 64, 8, 64, 201088, 24  # gpt-oss-20b


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (the native kernels are built on first use)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def packed(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = torch.randint(0, 256, (rows, cols // 32, 16), dtype=torch.uint8)
    scales = torch.randint(118, 127, (rows, cols // 32), dtype=torch.uint8)
    return blocks, scales


def pieces(dtype: torch.dtype) -> dict:
    """name -> (function of one decode token, bytes it reads, times per step)."""
    x = torch.randn(1, H, dtype=dtype)
    w1, w2 = packed(2 * I, H), packed(H, I)
    b1, b2 = torch.zeros(2 * I, dtype=dtype), torch.zeros(H, dtype=dtype)
    qkv = torch.randn((Q + 2 * KV) * D, H, dtype=dtype)
    o = torch.randn(H, Q * D, dtype=dtype)
    router = torch.randn(E, H, dtype=dtype)
    unembed = torch.randn(V, H, dtype=dtype)
    h = torch.randn(1, I, dtype=dtype)
    xt = x.expand(moe_cpu.MATVEC_MAX_TOKENS + 1, H).contiguous()  # past MATVEC_MAX_TOKENS: the tiled path
    w1_dense = dequantize_mxfp4(*w1, dtype)
    nbytes = lambda *ts: sum(t.numel() * t.element_size() for t in ts)
    return {
        "expert W1 (linear_mxfp4)": (lambda: moe_cpu.linear_mxfp4(x, *w1, b1), nbytes(*w1), LAYERS * K),
        f"  W1, tiled ({xt.shape[0]} tokens)": (lambda: moe_cpu.linear_mxfp4(xt, *w1, b1), nbytes(*w1), 0),
        "  W1, torch decode (baseline)": (lambda: moe_cpu._linear_torch(x, *w1, b1), nbytes(*w1), 0),
        "  W1 as dense bf16 (floor)": (lambda: F.linear(x, w1_dense, b1), nbytes(w1_dense), 0),
        "expert W2 (linear_mxfp4)": (lambda: moe_cpu.linear_mxfp4(h, *w2, b2), nbytes(*w2), LAYERS * K),
        "qkv projection (linear)": (lambda: kernels.linear(x, qkv), nbytes(qkv), LAYERS),
        "o projection (linear)": (lambda: kernels.linear(torch.randn(1, Q * D, dtype=dtype), o), nbytes(o), LAYERS),
        "router (linear)": (lambda: kernels.linear(x, router), nbytes(router), LAYERS),
        "unembedding (linear)": (lambda: kernels.linear(x, unembed), nbytes(unembed), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, batch 1")
    print(f"{'piece':28}{'ms/call':>10}{'GB/s':>8}{'calls/step':>12}{'ms/step':>10}")
    total = 0.0
    for name, (fn, nbytes, calls) in pieces(dtype).items():
        seconds = best_of(fn, args.repeat)
        total += seconds * calls
        print(f"{name:28}{seconds * 1e3:10.2f}{nbytes / seconds / 1e9:8.2f}{calls:12}{seconds * calls * 1e3:10.0f}")
    print(f"{'sum (no attention math, norms, sampler)':58}{total * 1e3:10.0f}")


if __name__ == "__main__":
    main()
