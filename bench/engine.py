"""Engine throughput against transformers `generate`, and the engine's own overhead per decode step.

    python -m bench.engine [--model .cache/tiny-model] [--requests 64] [--seed 0]

(a) A mixed workload (64 requests, prompts 32-512 tokens, outputs 16-256) on the default tiny model: the engine
(continuous batching, paged KV cache) next to transformers' GptOssForCausalLM.generate on the same checkpoint and
prompts, driven as a user would (all prompts in one left-padded batch, max_new_tokens = the longest output asked
for; only the tokens each request asked for count). Same run, same dtype (fp32), ratio printed. Each runs
--repeat times, interleaved, and the fastest counts (other work on a shared machine only ever slows a run).
(b) Engine overhead per decode step at 64 and 256 running requests, one step at a time: scheduling, input
preparation, the worker's host work in the step (inputs to the device, the sampling batch, the tokens read back)
and the state update, timed apart from the model forward with the logits and the sampler's tensor math over the
vocabulary (device work).
(c) The host overhead a step exposes, with a stand-in device whose forward takes a fixed 20 ms (bench/standin_device):
step wall time minus device time at 64 and 256 running requests, synchronous scheduling next to async scheduling
(step N+1 scheduled and prepared, step N-1's outputs processed, while step N runs).
(d) Constrained decoding on the same stand-in device: decode step time with every request held to a grammar next to
none (same run, 64 and 256 running): the mask's cost as a share of the constrained step (target <= 10% at 256).
`--mask-only` runs (d) alone and writes bench/results/engine_mask.json.
(e) The CPU path against main's (before issue 20) in the same run, --cpu-dtype (bf16 by default), on the tiny model
and on a larger one where the forward pass dominates (4 layers, hidden 1024, 8 experts, head_dim 64: made on first
use): main's = dense experts decoded at load (backend="reference") + main's CPU attention (prefill chunks through
the ref's per-sequence loop, `main_attention` below); this branch = packed MXFP4 experts (moe_cpu) + batched flash
attention. Mixed-workload throughput (--cpu-requests requests of the same mix), batch-1 decode tok/s, load time.
`--only cpu-path` runs (e) alone (writes bench/results/engine_cpu_path.json).
Writes bench/results/engine.json.
"""

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.cpu_path import cpu_path_rows, ensure_larger_model
from bench.standin_device import SPEC as STANDIN_SPEC
from bench.standin_device import BusyLog, TimedSampler, exposed_overhead
from engine import LLM, SamplingParams
from engine.weights.tiny_model import make_tiny_model

RESULTS = Path(__file__).parent / "results"


def workload(n: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(32, 512))], rng.randint(16, 256)) for _ in range(n)]


def run_engine(model: Path, requests, async_scheduling: bool | None = None, dtype: str = "float32",
               **engine_args) -> tuple[float, int]:
    llm = LLM(model, dtype=dtype, device="cpu", max_num_batched_tokens=2048, async_scheduling=async_scheduling,
              **engine_args)
    prompts = [{"prompt_token_ids": p} for p, _ in requests]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in requests]
    llm.generate(prompts[:2], params[:2])  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    return seconds, sum(len(o.outputs[0].token_ids) for o in outs)


def run_transformers(model: Path, requests) -> tuple[float, int]:
    from tests.hf_oracle import load_hf_model  # noqa: PLC0415 - the same loader the tests use

    hf = load_hf_model(model)
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


def time_module(module: torch.nn.Module, log: BusyLog) -> None:
    """Log every forward of `module` as busy time."""
    starts = []
    module.register_forward_pre_hook(lambda m, args: starts.append(time.perf_counter()))
    module.register_forward_hook(lambda m, args, out: log.intervals.append((starts.pop(), time.perf_counter())))


def decode_overhead(model: Path, running: int, steps: int = 10) -> dict:
    """Median per-phase milliseconds of decode steps with `running` requests in flight (synchronous steps)."""
    llm = LLM(model, dtype="float32", device="cpu", max_num_seqs=running, max_num_batched_tokens=max(2048, running),
              async_scheduling=False)
    core, worker = llm.engine, llm.engine.executor.worker
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=steps + 50, ignore_eos=True, seed=1)
    for i in range(running):
        core.add(core.make_requests({"prompt_token_ids": [i % 1000 + 1] * 24}, params, request_id=f"d{i}"))
    while any(r.num_computed_tokens < len(r.prompt_token_ids) for r in core.scheduler.requests.values()):
        core.step()  # prefill everything first
    model_log, sampler_log, host_log = BusyLog(), BusyLog(), BusyLog()
    forward, begin, sample = worker.runner.forward, worker.begin, worker._sample
    worker.sampler = TimedSampler(sampler_log)
    worker.runner.forward = lambda inputs: model_log.timed(forward, inputs)
    time_module(worker.model.unembed, model_log)  # the logits: device work too
    worker.begin = lambda step: host_log.timed(begin, step)  # the worker's host work: inputs to the device, ...
    worker._sample = lambda logits, ids: host_log.timed(sample, logits, ids)  # ... the batch, the tokens back
    phases = {"schedule": [], "prepare": [], "worker_host": [], "update": [], "model": [], "sample_math": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        plan = core.scheduler.schedule()
        t1 = time.perf_counter()
        prepared = worker.prepare([p.output for p in plan])
        t2 = time.perf_counter()
        inputs = worker.begin(prepared)
        rows = worker.finish(inputs, worker.forward(inputs))
        sampled = host_log.timed(rows.entries)  # the tokens read back (Worker.run does the same)
        t3 = time.perf_counter()
        core.scheduler.update(plan, sampled)
        t4 = time.perf_counter()
        assert len(plan[0].scheduled) == running and plan[0].num_batched_tokens == running
        model_s, sample_s = model_log.busy_between(t2, t3), sampler_log.busy_between(t2, t3)
        host_s = host_log.busy_between(t2, t3) - sample_s  # (the sampler runs inside _sample)
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, host_s, t4 - t3, model_s, sample_s)):
            phases[name].append(seconds * 1e3)
    core.shutdown()
    ms = {name: statistics.median(v) for name, v in phases.items()}
    ms["overhead"] = ms["schedule"] + ms["prepare"] + ms["worker_host"] + ms["update"]
    return ms


def standin_rows(model_dir: Path) -> list:
    """(c): exposed host overhead per step, synchronous and async scheduling, at 64 and 256 running."""
    if not (model_dir / "config.json").is_file():
        make_tiny_model(model_dir, STANDIN_SPEC)
    rows = [exposed_overhead(model_dir, n, a) for n in (64, 256) for a in (False, True)]
    print(f"\nstand-in device (forward {20.0:.0f} ms), ms per decode step")
    print(f"{'':28}{'step':>10}{'device':>10}{'exposed':>10}{'mean step':>11}{'mean exp.':>11}")
    for e in rows:
        print(f"{f'{e.running} running, ' + ('async' if e.async_scheduling else 'sync'):28}"
              f"{e.step_ms:10.3f}{e.device_ms:10.3f}{e.exposed_ms:10.3f}{e.mean_step_ms:11.3f}"
              f"{e.mean_exposed_ms:11.3f}")
    print("medians over the steps; exposed = step wall time - device time (forward + the sampler's math); "
          "target <= 0.5 ms at 256, async")
    return rows


def mask_rows(model_dir: Path, steps: int = 60) -> list[dict]:
    """(d): per running count, the stand-in's decode step with every request constrained vs none, interleaved."""
    if not (model_dir / "config.json").is_file():
        make_tiny_model(model_dir, STANDIN_SPEC)
    rows = []
    for n in (64, 256):
        plain, constrained = (exposed_overhead(model_dir, n, False, steps=steps, constrained=c) for c in (False, True))
        rows.append({"running": n, "plain_step_ms": plain.step_ms, "constrained_step_ms": constrained.step_ms,
                     "plain_device_ms": plain.device_ms, "constrained_device_ms": constrained.device_ms,
                     "mask_share": (constrained.step_ms - plain.step_ms) / constrained.step_ms})
    print("\nconstrained decoding, stand-in device (forward 20 ms), ms per decode step (median)")
    print(f"{'':16}{'none':>10}{'all constrained':>17}{'mask share':>12}")
    for r in rows:
        label = f"{r['running']} running"
        print(f"{label:16}{r['plain_step_ms']:10.3f}{r['constrained_step_ms']:17.3f}"
              f"{r['mask_share']:12.1%}")
    print("mask share = (constrained step - plain step) / constrained step; target <= 10% at 256")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(".cache/tiny-model"))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each in (a), best kept (a shared machine)")
    parser.add_argument("--mask-only", action="store_true", help="only (d): constrained vs unconstrained steps")
    parser.add_argument("--cpu-requests", type=int, default=16, help="requests of the mixed workload in (e)")
    parser.add_argument("--cpu-dtype", default="bfloat16", help="dtype of (e)")
    parser.add_argument("--only", choices=["cpu-path"], help="run (e) alone")
    args = parser.parse_args()
    if args.mask_only:
        return write_mask_only(mask_rows(args.model.parent / "standin-model"))
    if not (args.model / "config.json").is_file():
        make_tiny_model(args.model)
    cpu_models = [args.model, ensure_larger_model(args.model.parent / "cpu-larger-model")]
    if args.only == "cpu-path":
        cpu = cpu_path_rows(cpu_models, args.cpu_requests, args.seed, args.cpu_dtype, args.repeat)
        write("engine_cpu_path.json", {"benchmark": "engine_cpu_path", **header(), "cpu_path": cpu})
        return
    torch.manual_seed(args.seed)
    requests = workload(args.requests, 201088, args.seed)
    load_before = os.getloadavg()[0]
    runs = {"engine": [], "transformers": [], "async": []}  # interleaved, the best of --repeat each
    for _ in range(args.repeat):
        runs["engine"].append(run_engine(args.model, requests))
        runs["transformers"].append(run_transformers(args.model, requests))
        runs["async"].append(run_engine(args.model, requests, async_scheduling=True))
    (engine_s, engine_tokens), (hf_s, hf_tokens), (async_s, async_tokens) = (min(v) for v in runs.values())
    engine_tps, hf_tps, async_tps = engine_tokens / engine_s, hf_tokens / hf_s, async_tokens / async_s
    print(f"mixed workload: {args.requests} requests, {sum(len(p) for p, _ in requests)} prompt tokens, "
          f"{engine_tokens} output tokens")
    print(f"{'':36}{'seconds':>10}{'output tok/s':>14}")
    print(f"{'engine (continuous batching)':36}{engine_s:10.2f}{engine_tps:14.1f}")
    print(f"{'transformers generate':36}{hf_s:10.2f}{hf_tps:14.1f}")
    print(f"{'engine, async_scheduling=True':36}{async_s:10.2f}{async_tps:14.1f}")
    print(f"engine / transformers: {engine_tps / hf_tps:.2f}x (target >= 5x)")
    overhead = {n: decode_overhead(args.model, n) for n in (64, 256)}
    print(f"\n{'decode step, ms (median)':28}" + "".join(f"{k:>12}" for k in overhead[64]))
    for n, ms in overhead.items():
        print(f"{f'{n} running':28}" + "".join(f"{v:12.3f}" for v in ms.values()))
    print("overhead = schedule + prepare + worker_host + update (host work, incl. detokenization); excluded: model "
          "and sample_math (the sampler's tensor math over the 201k vocabulary, device work)")
    exposed = standin_rows(args.model.parent / "standin-model")
    masks = mask_rows(args.model.parent / "standin-model")
    cpu = cpu_path_rows(cpu_models, args.cpu_requests, args.seed, args.cpu_dtype, args.repeat)
    result = {
        "benchmark": "engine", **header(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # at the start and the end (a shared machine)
        "workload": {"requests": args.requests, "prompt_len": [32, 512], "output_len": [16, 256],
                     "seed": args.seed, "dtype": "float32", "model": str(args.model), "repeat": args.repeat},
        "all_runs_seconds": {name: [r[0] for r in v] for name, v in runs.items()},
        "engine": {"seconds": engine_s, "output_tokens": engine_tokens, "tokens_per_s": engine_tps},
        "transformers": {"seconds": hf_s, "output_tokens": hf_tokens, "tokens_per_s": hf_tps},
        "engine_over_transformers": engine_tps / hf_tps,
        "engine_async_scheduling": {"seconds": async_s, "output_tokens": async_tokens, "tokens_per_s": async_tps},
        "decode_step_ms": {str(n): ms for n, ms in overhead.items()},
        "standin_device": {"forward_ms": 20.0, "vocab": STANDIN_SPEC.vocab,
                           "rows": [dataclasses.asdict(e) for e in exposed]},
        "structured_mask": masks,
        "cpu_path": cpu,
    }
    write("engine.json", result)


def header() -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}"}


def write(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")


def write_mask_only(rows: list[dict]) -> None:
    write("engine_mask.json", {"benchmark": "engine --mask-only", **header(), "load_average_1min": os.getloadavg()[0],
                               "standin_device": {"forward_ms": 20.0, "vocab": STANDIN_SPEC.vocab},
                               "structured_mask": rows})


if __name__ == "__main__":
    main()
