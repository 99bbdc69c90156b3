"""A gpt-oss-20b-shaped checkpoint on the CPU path: peak RSS, load time, decode tok/s at batch 1 and 8.

    python -m bench.cpu_model [--model .cache/gpt-oss-20b-shaped] [--kv-tokens 8192] [--dtype bfloat16]

Makes the checkpoint first when it is missing (`gptoss make-tiny-model DIR --like gpt-oss-20b`: the real shapes,
random weights, 12.8 GiB in 4 GiB shards). Then, in this one process: the engine (experts packed in MXFP4, the
weights the checkpoint's memory map) with a KV cache that holds --kv-tokens tokens of one sequence, its start-up
memory report; a warm-up; then at batch 1 and 8 fresh --prompt-tokens prompts prefilled and --steps decode steps
timed apart from the prefill, and --baseline-steps at batch 1 without the native CPU kernels (the same-run baseline:
torch alone); the process's peak RSS
(getrusage: every resident page it ever held, file pages of the map included). Writes bench/results/cpu_model.json.
"""

import argparse
import json
import os
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path

from engine import LLM, SamplingParams  # noqa: I001 - before torch, so engine's thread settings apply (engine/__init__)

import torch
from engine.kernels import cpu_native
from engine.kv_cache_manager import KVCacheLayout, blocks_for_sequence
from engine.memory import GiB, rss_bytes
from engine.model.config import load_config
from engine.model_runner import ModelRunner
from engine.utils import resolve_dtype
from engine.weights.tiny_model import FULL_SIZE, SHAPES, TinyModelSpec, make_tiny_model

RESULTS = Path(__file__).parent / "results"


def native_isa() -> str | None:
    lib = cpu_native.library()
    return None if lib is None else cpu_native.ISA_NAMES[lib.gptoss_mxfp4_isa()]


def kv_bytes_for(model: Path, tokens: int, dtype: str, max_chunk: int, block_size: int = 16) -> int:
    """kv_cache_memory that holds one sequence of `tokens` tokens (the engine's own admission rule, sliding layers
    holding their window), plus the null block."""
    arch = load_config(model)
    layout = KVCacheLayout.for_model(arch, block_size)
    per_block = ModelRunner.bytes_per_block(arch, layout, block_size, resolve_dtype(dtype))
    return (blocks_for_sequence(layout, tokens + tokens // 32, max_chunk) + 1) * per_block  # the engine counts
    #                                                                        capacity in steps of 1/64


def decode_rate(llm: LLM, batch: int, prompt_tokens: int, steps: int, rng: random.Random) -> dict:
    """Output tok/s of decode steps alone at `batch` sequences: the engine stepped by hand, the clock started once
    every prompt is prefilled (that step samples each request's first token), then `steps` more steps."""
    core = llm.engine
    params = SamplingParams(temperature=0, max_tokens=1 + steps, ignore_eos=True)
    for i in range(batch):
        prompt = {"prompt_token_ids": [rng.randrange(1, 200000) for _ in range(prompt_tokens)]}
        core.add(core.make_requests(prompt, params, request_id=f"b{batch}-{i}"))
    start = time.perf_counter()
    while any(r.num_computed_tokens < len(r.prompt_token_ids) for r in core.scheduler.requests.values()):
        core.step()
    prefilled = time.perf_counter()
    while core.has_work:
        core.step()
    seconds = time.perf_counter() - prefilled
    return {"batch": batch, "steps": steps, "prefill_s": prefilled - start, "decode_s": seconds,
            "tokens_per_s": batch * steps / seconds, "ms_per_step": seconds / steps * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(".cache/gpt-oss-20b-shaped"))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--kv-tokens", type=int, default=8192)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="decode steps timed per batch size")
    parser.add_argument("--baseline-steps", type=int, default=2,
                        help="decode steps at batch 1 timed again without the native CPU kernels (torch alone); 0: skip")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        make_tiny_model(args.model, TinyModelSpec(**SHAPES["gpt-oss-20b"], **FULL_SIZE))
    files = sum(p.stat().st_size for p in args.model.glob("*.safetensors"))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    chunk = max(512, 8 * args.prompt_tokens)
    llm = LLM(args.model, dtype=args.dtype, device="cpu", enable_prefix_caching=False, max_num_seqs=8,
              kv_cache_memory=kv_bytes_for(args.model, args.kv_tokens, args.dtype, chunk), max_num_batched_tokens=chunk)
    load_s = time.perf_counter() - start
    memory = llm.engine.memory
    print(memory.line())
    print(f"load: {load_s:.1f} s ({files / GiB:.2f} GiB of safetensors)")
    rng = random.Random(0)
    llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=2))  # warm-up: pages read in
    rates = [decode_rate(llm, b, args.prompt_tokens, args.steps, rng) for b in (1, 8)]
    for r in rates:
        print(f"batch {r['batch']}: {r['tokens_per_s']:.2f} output tok/s ({r['ms_per_step']:.0f} ms per decode step; "
              f"prefill of {r['batch']} x {args.prompt_tokens} tokens {r['prefill_s']:.1f} s)")
    baseline = None
    if args.baseline_steps:  # the same engine and weights, the native kernels switched off: the torch path
        native = cpu_native.library
        cpu_native.library = lambda: None
        try:
            baseline = decode_rate(llm, 1, args.prompt_tokens, args.baseline_steps, rng)
        finally:
            cpu_native.library = native
        baseline["ratio"] = rates[0]["tokens_per_s"] / baseline["tokens_per_s"]
        print(f"baseline, batch 1 without the native kernels: {baseline['tokens_per_s']:.3f} tok/s "
              f"({baseline['ms_per_step']:.0f} ms per step); native {baseline['ratio']:.1f}x")
    rss, peak = rss_bytes()
    print(f"peak RSS {peak / GiB:.2f} GiB (now {rss / GiB:.2f} GiB); target <= 16 GiB")
    llm.engine.shutdown()
    result = {
        "benchmark": "cpu_model", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
                   f"{platform.platform()}",
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "model": str(args.model), "config": json.loads((args.model / "config.json").read_text()),
        "checkpoint_bytes": files, "dtype": args.dtype, "kv_tokens_asked": args.kv_tokens,
        "load_s": load_s, "memory_report": memory.__dict__, "decode": rates, "native_kernels": native_isa(),
        "baseline_without_native": baseline,
        "peak_rss_bytes": peak, "peak_rss_gib": peak / GiB, "target_gib": 16,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_model.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
