"""The reference model against transformers' GptOssForCausalLM on the same generated checkpoints (fp32)."""

import pytest
import torch

from engine.model.reference import DenseKVCache, Transformer
from engine.weights.checkpoint import load_weights
from tests.conftest import CONFIGS
from tests.hf_oracle import hf_greedy, hf_logits


def load(path):
    config, weights = load_weights(path, torch.float32)
    return Transformer.from_weights(config, weights)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_logits_match_transformers(checkpoints, name):
    path = checkpoints(name)
    model = load(path)
    gen = torch.Generator().manual_seed(0)
    for length in (1, 7, 3 * model.config.sliding_window + 5):  # past the window
        ids = torch.randint(0, model.config.vocab_size, (length,), generator=gen)
        ours = model.compute_logits(model(ids, torch.arange(length), DenseKVCache(model.config.num_hidden_layers)))
        assert rel_err(ours, hf_logits(path, ids.tolist())) < 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_decoding_matches_full_recompute(checkpoints, name):
    model = load(checkpoints(name))
    ids = torch.randint(0, model.config.vocab_size, (2 * model.config.sliding_window + 3,))
    full = model.compute_logits(model(ids, torch.arange(len(ids)), DenseKVCache(model.config.num_hidden_layers)))
    cache = DenseKVCache(model.config.num_hidden_layers)
    steps = [model.compute_logits(model(ids[:4], torch.arange(4), cache))]
    for i in range(4, len(ids)):
        steps.append(model.compute_logits(model(ids[i : i + 1], torch.tensor([i]), cache)))
    assert rel_err(torch.cat(steps), full) < 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_64_tokens_and_logprobs_match_transformers(checkpoints, name):
    path = checkpoints(name)
    model = load(path)
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, model.config.vocab_size, (model.config.sliding_window + 3,), generator=gen).tolist()
    expected_tokens, expected_logprobs = hf_greedy(path, prompt, 64)
    cache = DenseKVCache(model.config.num_hidden_layers)
    logits = model.compute_logits(model(torch.tensor(prompt), torch.arange(len(prompt)), cache))[-1:]
    eos = list(model.config.eos_token_ids)  # hf_greedy suppresses them (min_new_tokens): so do we
    tokens, logprobs = [], []
    for step in range(64):
        lp = torch.log_softmax(logits[-1], dim=-1)
        tokens.append(int(lp.index_fill(0, torch.tensor(eos), float("-inf")).argmax()))
        logprobs.append(lp)
        pos = torch.tensor([len(prompt) + step])
        logits = model.compute_logits(model(torch.tensor(tokens[-1:]), pos, cache))
    assert tokens == expected_tokens
    torch.testing.assert_close(torch.stack(logprobs), expected_logprobs, rtol=0, atol=1e-4)


def test_hf_and_original_layouts_give_identical_logits(checkpoints):
    hf = load(checkpoints("mha-e8k3-w8"))
    original = load(checkpoints("mha-e8k3-w8", format="original"))
    assert original.config.layout == "original"
    ids = torch.arange(30) * 7
    a = hf.compute_logits(hf(ids, torch.arange(30), DenseKVCache(3)))
    b = original.compute_logits(original(ids, torch.arange(30), DenseKVCache(3)))
    assert torch.equal(a, b)


def test_bfloat16_model_stays_close_to_fp32(checkpoints):
    path = checkpoints("gqa4-e4k2-w16")
    config, w32 = load_weights(path, torch.float32)
    _, w16 = load_weights(path, torch.bfloat16)
    ids = torch.arange(20) * 11
    a = Transformer.from_weights(config, w32)
    b = Transformer.from_weights(config, w16)
    la = a.compute_logits(a(ids, torch.arange(20), DenseKVCache(2)))
    lb = b.compute_logits(b(ids, torch.arange(20), DenseKVCache(2)))
    assert rel_err(lb, la) < 5e-2
