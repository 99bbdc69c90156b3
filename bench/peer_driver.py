"""One side of bench/peer.py in a process of its own: vLLM (run by the peer venv's python) or our engine.

    python -m bench.peer_driver {vllm|ours} SPEC.json OUT.json      (from the repository root)

Flow: engine built (timed after the imports: load_s; startup_s counts from the moment bench/peer.py spawned this
process: interpreter, imports and load) -> warm-up (2 requests) -> the mixed workload, greedy, timed -> batch-1 decode: one prompt with
max_tokens 1 and 1 + steps, best of `repeat` each, steps / (long - short) -> OUT.json with the output tokens.
Standard library only at the top: the peer venv does not have this project installed, and this project's venv
does not have vLLM. SPEC.json holds model, dtype, kv_bytes, max_model_len, requests [[prompt ids, max tokens]],
batch1 {prompt, steps, repeat}.
"""

import json
import os
import sys
import time
from collections.abc import Callable

Generate = Callable[[list[list[int]], list[int]], list[list[int]]]  # prompts, max tokens -> output token ids


def vllm_side(spec: dict) -> tuple[Generate, dict]:
    """vLLM's LLM at its defaults (its process layout set by VLLM_ENABLE_V1_MULTIPROCESSING, from the parent), the
    KV cache given as VLLM_CPU_KVCACHE_SPACE (whole GiB) by the parent."""
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=spec["model"], dtype=spec["dtype"], skip_tokenizer_init=True, max_model_len=spec["max_model_len"],
              seed=0)

    def generate(prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, detokenize=False) for m in max_tokens]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    info = {"load_s": time.perf_counter() - start, "version": vllm.__version__, "torch": torch.__version__,
            "amx": torch.cpu._is_amx_tile_supported()}  # the MoE and attention paths: bench/peer.py reads vLLM's log
    return generate, info


def ours_side(spec: dict) -> tuple[Generate, dict]:
    """Our engine as bench/cpu_path.py runs it (kernels backend: packed MXFP4 experts), the same KV budget; token
    ids only, as vLLM's side (detokenize=False). engine is imported before torch, as the CLI and the replicas do (its
    thread settings apply before torch loads)."""
    from engine import LLM, SamplingParams  # noqa: I001 - first: see the docstring

    import torch

    start = time.perf_counter()
    llm = LLM(spec["model"], dtype=spec["dtype"], device="cpu", max_num_batched_tokens=2048,
              kv_cache_memory=spec["kv_bytes"])

    def generate(prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, detokenize=False) for m in max_tokens]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        return [list(o.outputs[0].token_ids) for o in outs]

    return generate, {"load_s": time.perf_counter() - start, "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()}


def batch1_rate(generate: Generate, prompt: list[int], steps: int, repeat: int) -> dict:
    """Decode tok/s at batch 1 without the prefill: (best time for 1 + steps tokens - best for 1) / steps."""
    short, long = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        generate([prompt], [1])
        t1 = time.perf_counter()
        generate([prompt], [1 + steps])
        t2 = time.perf_counter()
        short, long = min(short, t1 - t0), min(long, t2 - t1)
    return {"steps": steps, "short_s": short, "long_s": long, "tokens_per_s": steps / (long - short)}


def run(side: str, spec: dict) -> dict:
    generate, info = (vllm_side if side == "vllm" else ours_side)(spec)
    startup_s = time.time() - float(os.environ.get("PEER_SPAWNED", time.time()))
    prompts = [p for p, _ in spec["requests"]]
    max_tokens = [m for _, m in spec["requests"]]
    generate(prompts[:2], max_tokens[:2])  # warm-up
    start = time.perf_counter()
    tokens = generate(prompts, max_tokens)
    mixed_s = time.perf_counter() - start
    b1 = spec["batch1"]
    batch1 = batch1_rate(generate, b1["prompt"], b1["steps"], b1["repeat"])
    output_tokens = sum(len(t) for t in tokens)
    return {"side": side, **info, "startup_s": startup_s, "mixed_s": mixed_s,
            "output_tokens": output_tokens, "mixed_tokens_per_s": output_tokens / mixed_s,
            "batch1_tokens_per_s": batch1["tokens_per_s"], "batch1": batch1,
            "token_ids": tokens}  # peak RSS is sampled by bench/peer.py: ru_maxrss here keeps the parent's over fork


def main() -> None:
    side, spec_path, out_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(side, spec)
    with open(out_path, "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # vLLM's engine-core process and threads would otherwise hold the exit up


if __name__ == "__main__":
    main()
