"""Section (d) of bench.engine: the CPU path against main's before issue 20, in the same run.

Flow: per model (the tiny one, and a larger one where the forward pass dominates), interleaved --repeat times, the
best run of each kept: main's path (experts dequantized at load, backend="reference", with main's CPU attention
`main_attention` swapped in) and this branch's (packed MXFP4 experts through engine.kernels.moe_cpu, batched flash
attention) -> load seconds, mixed-workload output tok/s, batch-1 decode tok/s -> rows with the ratios, printed.
"""

import random
import time
from pathlib import Path

import torch

from bench.cpu_model import decode_rate
from engine import LLM, SamplingParams
from engine.kernels import attention
from engine.kernels.attention import paged_attention_ref
from engine.weights.tiny_model import TinyModelSpec, make_tiny_model

LARGER = TinyModelSpec(seed=4, layers=4, experts=8, experts_per_token=4, hidden=1024, heads=16, kv_heads=4,
                       head_dim=64, sliding_window=128)  # the "larger model" (head_dim 64 for the peer)


def ensure_larger_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        make_tiny_model(path, LARGER)
    return path


def main_attention(q, kv_cache, block_table, seq_lens, query_start_loc, sinks, sliding_window, scale):
    """main's paged_attention_cpu at eefe68d (the baseline): decode rows in one padded product, prefill chunks
    through the ref's per-sequence loop."""
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    is_decode = q_lens == 1
    decode = is_decode.nonzero().squeeze(-1)
    window = (sliding_window, scale)
    out = torch.empty_like(q)
    if decode.numel():
        rows = query_start_loc[decode].long()
        out[rows] = _main_decode(q[rows], kv_cache, block_table[decode], seq_lens[decode], sinks, *window)
    prefill = (~is_decode).nonzero().squeeze(-1)
    if prefill.numel():
        lens = q_lens[prefill].long()
        starts = torch.cat([lens.new_zeros(1), lens.cumsum(0)])
        rows = (torch.arange(int(starts[-1])) - starts[:-1].repeat_interleave(lens)
                + query_start_loc[prefill].long().repeat_interleave(lens))
        out[rows] = paged_attention_ref(q[rows], kv_cache, block_table[prefill], seq_lens[prefill], starts.int(),
                                        sinks, *window)
    return out


def _main_decode(q, kv_cache, block_table, seq_lens, sinks, sliding_window, scale):
    B, Hq, D = q.shape
    KV, block_size = kv_cache.shape[3], kv_cache.shape[2]
    last = seq_lens.long() - 1
    first = torch.zeros_like(last) if sliding_window is None else (last - sliding_window + 1).clamp_min(0)
    width = int((last - first).max()) + 1
    k_pos = first[:, None] + torch.arange(width)[None, :]
    valid = k_pos <= last[:, None]
    k_pos = torch.where(valid, k_pos, 0)
    slots = block_table.long().gather(1, k_pos // block_size) * block_size + k_pos % block_size
    flat = kv_cache.view(2, -1, KV, D)
    k, v = flat[0, slots].float(), flat[1, slots].float()
    qg = q.float().view(B, KV, Hq // KV, D)
    scores = torch.einsum("bkgd,blkd->bkgl", qg, k) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    sink = sinks.float().view(1, KV, Hq // KV, 1).expand(B, -1, -1, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("bkgl,blkd->bkgd", probs, v).reshape(B, Hq, D).to(q.dtype)


def run_path(model: Path, requests, main: bool, dtype: str) -> dict:
    """One engine on one path: load seconds, the mixed workload, then batch-1 decode."""
    original = attention.paged_attention_cpu
    if main:
        attention.paged_attention_cpu = main_attention  # engine.kernels looks it up at call time
    try:
        start = time.perf_counter()
        llm = LLM(model, dtype=dtype, device="cpu", backend="reference" if main else "kernels",
                  max_num_batched_tokens=2048)
        load_s = time.perf_counter() - start
        prompts = [{"prompt_token_ids": p} for p, _ in requests]
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in requests]
        llm.generate(prompts[:2], params[:2])  # warm-up (compiles the decode for a big enough model)
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        mixed_s = time.perf_counter() - start
        batch1 = decode_rate(llm, 1, 64, 16, random.Random(1))
        llm.engine.shutdown()
    finally:
        attention.paged_attention_cpu = original
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"load_s": load_s, "mixed_s": mixed_s, "output_tokens": tokens, "mixed_tokens_per_s": tokens / mixed_s,
            "batch1_tokens_per_s": batch1["tokens_per_s"], "token_ids": [o.outputs[0].token_ids for o in outs]}


def cpu_path_rows(models: list[Path], num_requests: int, seed: int, dtype: str, repeat: int) -> list[dict]:
    from bench.engine import workload  # noqa: PLC0415 - bench.engine imports this module

    rows = []
    for model in models:
        requests = workload(num_requests, 201088, seed)
        runs = {"main": [], "this": []}
        for _ in range(repeat):
            for name in runs:
                runs[name].append(run_path(model, requests, name == "main", dtype))
        best = {name: {k: (min if k.endswith("_s") else max)(r[k] for r in v) for k in v[0] if k != "token_ids"}
                for name, v in runs.items()}
        same = sum(a == b for a, b in zip(runs["main"][0]["token_ids"], runs["this"][0]["token_ids"]))
        rows.append({"model": str(model), "dtype": dtype, "requests": num_requests, "main": best["main"],
                     "this": best["this"], "same_greedy_outputs": same,
                     "mixed_ratio": best["this"]["mixed_tokens_per_s"] / best["main"]["mixed_tokens_per_s"],
                     "batch1_ratio": best["this"]["batch1_tokens_per_s"] / best["main"]["batch1_tokens_per_s"],
                     "all_runs": {n: [{k: r[k] for k in r if k != "token_ids"} for r in v] for n, v in runs.items()}})
    _print(rows)
    return rows


def _print(rows: list[dict]) -> None:
    print(f"\n(d) CPU path vs main's, {rows[0]['dtype']}: {'':4}{'load s':>14}{'mixed tok/s':>20}{'batch-1 tok/s':>20}")
    for r in rows:
        m, t = r["main"], r["this"]
        print(f"{Path(r['model']).name:36}{m['load_s']:7.1f}/{t['load_s']:<6.1f}"
              f"{m['mixed_tokens_per_s']:9.1f}/{t['mixed_tokens_per_s']:<8.1f}{r['mixed_ratio']:5.2f}x"
              f"{m['batch1_tokens_per_s']:9.1f}/{t['batch1_tokens_per_s']:<8.1f}{r['batch1_ratio']:5.2f}x")
    print("main / this branch; greedy outputs identical:",
          ", ".join(f"{r['same_greedy_outputs']}/{r['requests']}" for r in rows), "(bf16: rounding may differ)")
