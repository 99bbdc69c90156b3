"""A tiny checkpoint that every tested split divides: 8 query / 2 KV heads (TP 2 and 4, KV replicated at 4),
4 experts (EP 2 and 4), intermediate 128 = 4 MXFP4 blocks (TP-sliced experts over up to 4 ranks), vocab 4096."""

import pytest

from engine.weights.tiny_model import TinyModelSpec, make_tiny_model

SPEC = TinyModelSpec(seed=4, layers=2, experts=4, experts_per_token=2, hidden=64, intermediate=128, heads=8,
                     kv_heads=2, head_dim=16, sliding_window=8, vocab=4096)


@pytest.fixture(scope="session")
def parallel_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("parallel-tiny"), SPEC)
