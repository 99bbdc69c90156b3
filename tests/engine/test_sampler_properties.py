"""Property test: any valid mix of requests gives in-range token ids and finite logprobs, and respects bans."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sampler import Sampler, seeded_generator
from engine.sampling_params import MAX_LOGPROBS, SamplingParams
from tests.engine.sampler_reference import build


@st.composite
def requests(draw, vocab_size: int):
    """One row: SamplingParams over the whole valid space, its histories and stop ids."""
    ids = st.integers(0, vocab_size - 1)
    params = SamplingParams(
        temperature=draw(st.sampled_from([0.0, 1e-4, 0.3, 1.0, 5.0]) | st.floats(0, 10)),
        top_p=draw(st.sampled_from([1.0, 1e-6]) | st.floats(1e-6, 1)),
        top_k=draw(st.integers(-1, vocab_size + 3)),
        min_p=draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
        presence_penalty=draw(st.floats(-2, 2)),
        frequency_penalty=draw(st.floats(-2, 2)),
        repetition_penalty=draw(st.sampled_from([1.0]) | st.floats(0.05, 5)),
        logit_bias=draw(st.none() | st.dictionaries(ids, st.floats(-100, 100), max_size=4)),
        logprobs=draw(st.none() | st.integers(0, MAX_LOGPROBS)),
        min_tokens=draw(st.integers(0, 3)),
        seed=draw(st.none() | st.integers(0, 2**31)),
        ignore_eos=draw(st.booleans()),
    )
    prompt = draw(st.lists(ids, max_size=6))
    output = draw(st.lists(ids, max_size=6))
    stops = draw(st.lists(ids, max_size=min(3, vocab_size - 1), unique=True))  # never the whole vocab
    return params, prompt, output, stops


@st.composite
def batches(draw):
    vocab_size = draw(st.integers(2, 40))
    rows = draw(st.lists(requests(vocab_size), min_size=1, max_size=6))
    scale = draw(st.sampled_from([0.0, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**16))
    logits = torch.randn(len(rows), vocab_size, generator=torch.Generator().manual_seed(seed)) * scale
    return vocab_size, rows, logits


@settings(max_examples=150, deadline=None)
@given(batches())
def test_random_batches_give_valid_tokens(case):
    vocab_size, rows, logits = case
    params, prompts, outputs, stops = map(list, zip(*rows))
    gens = [seeded_generator(p.seed, "cpu") for p in params]
    out = Sampler()(logits, build(params, vocab_size, prompts, outputs, gens, stops))
    assert out.token_ids.shape == (len(rows),)
    assert ((out.token_ids >= 0) & (out.token_ids < vocab_size)).all()
    assert out.logprobs.isfinite().all() and out.topn_logprobs.isfinite().all()
    n = min(max(p.logprobs or 0 for p in params), vocab_size)
    assert out.topn_ids.shape == (len(rows), n)
    for p, output, stop, token in zip(params, outputs, stops, out.token_ids.tolist()):
        if len(output) < p.min_tokens and not p.ignore_eos:
            assert token not in stop
