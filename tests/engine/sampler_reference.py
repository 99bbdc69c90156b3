"""Plain one-row references for the sampler's stages (Python floats, float64, loops): slow and obvious."""

import dataclasses
import math
from collections import Counter

import torch

from engine.sampler import SamplingBatch
from engine.sampling_params import SamplingParams

# Upper 0.1% points of the chi-square distribution, by degrees of freedom (a fixed-seed test fails at most that
# often when the sampler is right).
CHI2_CRITICAL_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88,
                     10: 29.59, 11: 31.26, 12: 32.91, 13: 34.53, 14: 36.12, 15: 37.70}


def build(params, vocab_size, prompt_ids=None, output_ids=None, generators=None, stop_ids=None, device="cpu"):
    """SamplingBatch.build with empty histories by default."""
    rows = len(params)
    return SamplingBatch.build(
        params,
        prompt_ids or [[] for _ in range(rows)],
        output_ids or [[] for _ in range(rows)],
        generators or [None] * rows,
        stop_ids or [[] for _ in range(rows)],
        vocab_size,
        device,
    )


def short(params: SamplingParams) -> str:
    """A test id: only the fields that differ from the defaults."""
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    default = dataclasses.asdict(SamplingParams())
    return ",".join(f"{k}={v}" for k, v in fields.items() if v != default[k]) or "defaults"


def ref_softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    weights = [math.exp(x - top) if x > -math.inf else 0.0 for x in xs]
    return [w / sum(weights) for w in weights]


def ref_kept(row: list[float], p: SamplingParams) -> set[int]:
    """Token ids that survive temperature -> top-k -> top-p -> min-p for one row."""
    xs = [x / p.temperature for x in row]
    order = sorted(range(len(xs)), key=lambda i: -xs[i])
    kept = order[: len(xs) if p.top_k <= 0 else p.top_k]
    probs = dict(zip(kept, ref_softmax([xs[i] for i in kept])))
    if p.top_p < 1:
        mass, nucleus = 0.0, []
        for i in kept:
            nucleus.append(i)
            mass += probs[i]
            if mass >= p.top_p:
                break
        kept = nucleus
    if p.min_p > 0:
        best = max(probs[i] for i in kept)
        kept = [i for i in kept if probs[i] >= p.min_p * best]
    return set(kept)


def ref_probs(row: list[float], p: SamplingParams) -> list[float]:
    """The distribution one row samples from: softmax(row / T) renormalized over the kept tokens."""
    kept = ref_kept(row, p)
    return ref_softmax([x / p.temperature if i in kept else -math.inf for i, x in enumerate(row)])


def ref_penalize(row: list[float], p: SamplingParams, prompt: list[int], output: list[int]) -> list[float]:
    """Repetition over prompt + output (HF), then presence / frequency over output (OpenAI)."""
    xs = list(row)
    for t in set(prompt) | set(output):
        xs[t] = xs[t] / p.repetition_penalty if xs[t] > 0 else xs[t] * p.repetition_penalty
    for t, count in Counter(output).items():
        xs[t] -= count * p.frequency_penalty + p.presence_penalty
    return xs


def chi_square(counts: torch.Tensor, probs: list[float]) -> tuple[float, int]:
    """Pearson's statistic over the tokens with probability > 0, and its degrees of freedom."""
    total = counts.sum().item()
    cells = [(counts[i].item(), total * q) for i, q in enumerate(probs) if q > 0]
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1
