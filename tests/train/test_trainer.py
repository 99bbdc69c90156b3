"""Training: batches hold exactly the assistant's tokens as targets, and a run is reproducible bit for bit."""

import json
import random
from dataclasses import replace

import torch

from engine.llm import LLM
from engine.model.config import load_config
from engine.sampling_params import SamplingParams
from engine.text.tokenizer import Tokenizer
from engine.train.trainer import HARMONY_MODEL, Sequence, TrainSpec, learning_rate, make_batches, render_corpus, train
from engine.weights.tiny_model import TinyModelSpec

SMALL = TrainSpec(seed=3, dialogues=60, steps=4, batch_tokens=2048, warmup_steps=2, quantize_from=0.5,
                  model=replace(HARMONY_MODEL, layers=2, intermediate=64))


def test_batches_target_exactly_the_reply():
    seqs = [Sequence([5, 6, 7, 8, 9], 3), Sequence([5, 6, 1], 2), Sequence([2, 3, 4, 5], 1)]
    compact = torch.full((10,), -1, dtype=torch.long)
    compact[torch.arange(10)] = torch.arange(10) + 100
    batches = make_batches(seqs, compact, batch_tokens=8, rng=random.Random(0))
    assert sum(b.ids.shape[0] for b in batches) == 3
    assert all(b.ids.numel() <= 8 or b.ids.shape[0] == 1 for b in batches)
    rows = {tuple(r.tolist()): t.tolist() for b in batches for r, t in zip(b.ids, b.targets)}
    assert rows[(105, 106, 107, 108, 109)] == [-1, -1, 108, 109, -1]  # tokens 3.. are the target
    assert rows[(105, 106, 101)] == [-1, 101, -1]
    assert rows[(102, 103, 104, 105)] == [103, 104, 105, -1]


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    spec = TrainSpec(steps=100, warmup_steps=10, lr=1.0)
    rates = [learning_rate(spec, s) for s in range(100)]
    assert rates[0] == 0.1 and rates[9] == 1.0 and rates[10] == 1.0
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and abs(rates[-1] - 0.1) < 1e-3


def test_render_corpus_targets_are_the_replies():
    seqs = render_corpus(replace(SMALL, dialogues=30), Tokenizer.load())
    tok = Tokenizer.load()
    for s in seqs:
        assert tok.decode(s.ids[s.start - 2 : s.start]) == "<|start|>assistant"
        assert s.ids[-1] in tok.stop_token_ids


def test_training_is_reproducible_and_loads_in_the_engine(tmp_path):
    first, second = train(tmp_path / "a", SMALL), train(tmp_path / "b", SMALL)
    for name in ("model.safetensors", "config.json", "generation_config.json", "training.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.final_loss == second.final_loss and first.vocab_used == second.vocab_used
    config = load_config(tmp_path / "a")
    expected = SMALL.model.config()
    assert config.eos_token_ids == expected.eos_token_ids[:1]  # HF config.json holds one eos id, as the real one
    assert replace(config, eos_token_ids=expected.eos_token_ids) == expected
    assert config.vocab_size == TinyModelSpec().vocab
    assert json.loads((tmp_path / "a" / "training.json").read_text())["spec"]["seed"] == 3
    llm = LLM(tmp_path / "a", dtype="float32", device="cpu")
    try:
        out = llm.chat([{"role": "user", "content": "What is 2 + 3?"}], SamplingParams(temperature=0, max_tokens=8))
    finally:
        llm.engine.shutdown()
    assert len(out.token_ids) >= 1
