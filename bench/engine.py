"""Engine throughput against transformers `generate`, and the engine's own overhead per decode step.

    python -m bench.engine [--model .cache/tiny-model] [--requests 64] [--seed 0]

(a) A mixed workload (64 requests, prompts 32-512 tokens, outputs 16-256) on the default tiny model: the engine
(continuous batching, paged KV cache) next to transformers' GptOssForCausalLM.generate on the same checkpoint and
prompts, driven as a user would (all prompts in one left-padded batch, max_new_tokens = the longest output asked
for; only the tokens each request asked for count). Same run, same dtype (fp32), ratio printed.
(b) Engine overhead per decode step at 64 and 256 running requests: scheduling, input preparation, sampling and
the state update (host work), each timed around the model forward and the sampler's tensor math over the
vocabulary (device work), which are reported apart.
Writes bench/results/engine.json.
"""

import argparse
import json
import platform
import random
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine import LLM, SamplingParams
from engine.model_runner import PagedKVCache
from engine.weights.tiny_model import make_tiny_model

RESULTS = Path(__file__).parent / "results"


def workload(n: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(32, 512))], rng.randint(16, 256)) for _ in range(n)]


def run_engine(model: Path, requests) -> tuple[float, int]:
    llm = LLM(model, dtype="float32", device="cpu", max_num_batched_tokens=2048)
    prompts = [{"prompt_token_ids": p} for p, _ in requests]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in requests]
    llm.generate(prompts[:2], params[:2])  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    return seconds, sum(len(o.outputs[0].token_ids) for o in outs)


def run_transformers(model: Path, requests) -> tuple[float, int]:
    from transformers import GptOssForCausalLM

    hf = GptOssForCausalLM.from_pretrained(str(model), dtype=torch.float32, attn_implementation="eager").eval()
    width = max(len(p) for p, _ in requests)
    ids = torch.zeros(len(requests), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, _) in enumerate(requests):  # left padding, as generate expects for decoder-only models
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    new = max(m for _, m in requests)
    with torch.no_grad():
        start = time.perf_counter()
        hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                    pad_token_id=0, temperature=None, top_p=None, top_k=None)
        seconds = time.perf_counter() - start
    return seconds, sum(m for _, m in requests)


def decode_overhead(model: Path, running: int, steps: int = 10) -> dict:
    """Median per-phase milliseconds of decode steps with `running` requests in flight."""
    llm = LLM(model, dtype="float32", device="cpu", max_num_seqs=running, max_num_batched_tokens=max(2048, running))
    core = llm.engine
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=steps + 50, ignore_eos=True, seed=1)
    for i in range(running):
        core.add(core.make_requests({"prompt_token_ids": [i % 1000 + 1] * 24}, params, request_id=f"d{i}"))
    while any(r.num_computed_tokens < len(r.prompt_token_ids) for r in core.scheduler.requests.values()):
        core.step()  # prefill everything first
    phases = {"schedule": [], "prepare": [], "sample_build": [], "update": [], "model": [], "sample_math": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        out = core.scheduler.schedule()
        t1 = time.perf_counter()
        inputs = core.runner.prepare(out, core.kv)
        t2 = time.perf_counter()
        hidden = core.model(inputs.input_ids, inputs.positions, PagedKVCache(core.runner.kv_caches, core.layout,
                                                                              inputs))
        logits = core.model.compute_logits(hidden[inputs.logits_indices])
        t3 = time.perf_counter()
        batch = core.runner.sampling_batch(inputs.sampled, core.model_config.vocab_size)
        t_build = time.perf_counter()
        sampled = core.runner.sample(logits, inputs.sampled, core.model_config.vocab_size, batch)
        t4 = time.perf_counter()
        core.scheduler.update(out, sampled)
        t5 = time.perf_counter()
        assert len(out.scheduled) == running and out.num_batched_tokens == running
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t_build - t3, t5 - t4, t3 - t2, t4 - t_build)):
            phases[name].append(seconds * 1e3)
    ms = {name: statistics.median(v) for name, v in phases.items()}
    ms["overhead"] = ms["schedule"] + ms["prepare"] + ms["sample_build"] + ms["update"]
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(".cache/tiny-model"))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        make_tiny_model(args.model)
    torch.manual_seed(args.seed)
    requests = workload(args.requests, 201088, args.seed)
    engine_s, engine_tokens = run_engine(args.model, requests)
    hf_s, hf_tokens = run_transformers(args.model, requests)
    engine_tps, hf_tps = engine_tokens / engine_s, hf_tokens / hf_s
    print(f"mixed workload: {args.requests} requests, {sum(len(p) for p, _ in requests)} prompt tokens, "
          f"{engine_tokens} output tokens")
    print(f"{'':28}{'seconds':>10}{'output tok/s':>14}")
    print(f"{'engine (continuous batching)':28}{engine_s:10.2f}{engine_tps:14.1f}")
    print(f"{'transformers generate':28}{hf_s:10.2f}{hf_tps:14.1f}")
    print(f"engine / transformers: {engine_tps / hf_tps:.2f}x (target >= 5x)")
    overhead = {n: decode_overhead(args.model, n) for n in (64, 256)}
    print(f"\n{'decode step, ms (median)':28}" + "".join(f"{k:>10}" for k in overhead[64]))
    for n, ms in overhead.items():
        print(f"{f'{n} running':28}" + "".join(f"{v:10.3f}" for v in ms.values()))
    print("overhead = schedule + prepare + sample_build + update (host work, incl. detokenization); excluded: model "
          "and sample_math (the sampler's tensor math over the 201k vocabulary, device work); target < 1 ms at 256")
    result = {
        "benchmark": "engine", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}",
        "workload": {"requests": args.requests, "prompt_len": [32, 512], "output_len": [16, 256],
                     "seed": args.seed, "dtype": "float32", "model": str(args.model)},
        "engine": {"seconds": engine_s, "output_tokens": engine_tokens, "tokens_per_s": engine_tps},
        "transformers": {"seconds": hf_s, "output_tokens": hf_tokens, "tokens_per_s": hf_tps},
        "engine_over_transformers": engine_tps / hf_tps,
        "decode_step_ms": {str(n): ms for n, ms in overhead.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
