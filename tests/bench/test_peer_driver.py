"""bench/peer_driver.py's batch-1 rate on a fake engine (no vLLM, no model)."""

import pytest

from bench import peer_driver


def test_batch1_rate_takes_the_prefill_out(monkeypatch):
    clock = {"t": 0.0}

    def generate(prompts, max_tokens):  # 1 s of prefill, then 0.1 s per token after the first
        clock["t"] += 1.0 + 0.1 * (max_tokens[0] - 1)
        return [[0] * max_tokens[0]]

    monkeypatch.setattr(peer_driver.time, "perf_counter", lambda: clock["t"])
    rate = peer_driver.batch1_rate(generate, [1, 2, 3], steps=10, repeat=2)
    assert rate["tokens_per_s"] == pytest.approx(10.0)
