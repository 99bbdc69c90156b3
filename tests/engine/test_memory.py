"""The start-up memory report: weights as loaded (experts packed), the KV cache as allocated, the RSS of the
process; and the activation estimate grows with the token budget and the context."""

import dataclasses

from engine import LLM
from engine.config import EngineConfig
from engine.memory import activation_bytes, rss_bytes
from engine.model.config import load_config
from engine.weights.checkpoint import expected_tensors


def test_report_counts_packed_experts_and_the_allocated_cache(tiny_model):
    llm = LLM(tiny_model, dtype="bfloat16", device="cpu", kv_cache_memory=8 << 20)
    memory, worker = llm.engine.memory, llm.engine.executor.worker
    arch = load_config(tiny_model)
    packed = sum(_numel(spec.shape)
                 for name, spec in expected_tensors(arch).items() if name.endswith(("_blocks", "_scales")))
    biases = sum(2 * _numel(spec.shape) for name, spec in expected_tensors(arch).items()
                 if name.endswith((".b1", ".b2")))
    assert memory.weights["experts"] == packed + biases  # uint8 blocks and scales, bf16 biases: nothing dense
    assert memory.kv_cache == sum(t.numel() * t.element_size() for t in worker.runner.kv_caches) <= 8 << 20
    assert 0 < memory.rss <= memory.peak_rss and memory.kv_tokens == llm.engine.max_tokens_per_sequence
    assert memory.line().startswith("memory: weights ")
    llm.engine.shutdown()


def test_activation_estimate_grows_with_budget_and_context(tiny_model):
    arch, config = load_config(tiny_model), EngineConfig()
    small = activation_bytes(arch, config, 1024, 2)
    assert activation_bytes(arch, config, 8192, 2) > small
    bigger = dataclasses.replace(config, scheduler=dataclasses.replace(config.scheduler, max_num_batched_tokens=8192))
    assert activation_bytes(arch, bigger, 1024, 2) > small
    rss, peak = rss_bytes()
    assert 0 < rss <= peak


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
