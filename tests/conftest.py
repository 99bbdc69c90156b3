"""Shared fixtures: small checkpoints in the real format, generated once per test session."""

import pytest

from engine.weights.tiny_model import TinyModelSpec, make_tiny_model

# Three shapes that differ in GQA ratio, experts, top-k and sliding window (prompts in tests exceed the window).
CONFIGS = {
    "gqa4-e4k2-w16": TinyModelSpec(seed=1),
    "mha-e8k3-w8": TinyModelSpec(seed=2, layers=3, experts=8, experts_per_token=3, heads=4, kv_heads=4,
                                 head_dim=16, sliding_window=8, vocab=4096),
    "mqa-e6k1-w5": TinyModelSpec(seed=3, layers=4, experts=6, experts_per_token=1, hidden=96, intermediate=64,
                                 heads=8, kv_heads=1, head_dim=8, sliding_window=5, vocab=4096),
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """name -> directory of a generated HF-layout checkpoint, made on first use."""
    made = {}

    def get(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in made:
            spec = TinyModelSpec(**{**CONFIGS[name].__dict__, **overrides})
            made[key] = make_tiny_model(tmp_path_factory.mktemp(name), spec)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_model(checkpoints):
    """The default tiny model (real vocabulary)."""
    return checkpoints("gqa4-e4k2-w16")
