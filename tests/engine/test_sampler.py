"""Sampler vs the one-row references in reference.py, and torch (argmax, log_softmax, softmax) as the oracle."""

import dataclasses

import pytest
import torch

from engine.sampler import Sampler, apply_filters, apply_penalties, seeded_generator
from engine.sampling_params import SamplingParams
from tests.engine.sampler_reference import (
    CHI2_CRITICAL_999,
    build,
    chi_square,
    ref_kept,
    ref_penalize,
    ref_probs,
    short,
)

# B = batch rows, V = vocab

# Ten distinct logits, shuffled, so every kept token has probability >= ~1% (enough for a chi-square test).
ROW = [0.7, -0.3, 2.0, 0.1, 1.3, -1.0, 1.6, 0.4, -0.6, 1.0]
SAMPLES = 40_000


def sample_counts(params: SamplingParams, row=ROW, samples=SAMPLES, seed=0) -> torch.Tensor:
    """Histogram over the vocab of `samples` rows of the same request, sampled in one batch."""
    torch.manual_seed(seed)
    logits = torch.tensor([row] * samples)
    out = Sampler()(logits, build([params] * samples, len(row)))
    return torch.bincount(out.token_ids, minlength=len(row))


def test_greedy_is_argmax():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    out = Sampler()(logits, build([SamplingParams(temperature=0)] * 6, 300))
    torch.testing.assert_close(out.token_ids, logits.argmax(-1))


def test_greedy_rows_beside_sampled_rows_are_argmax():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0 if i % 2 else 1.0, top_p=0.8) for i in range(6)]
    out = Sampler()(logits, build(params, 300))
    torch.testing.assert_close(out.token_ids[1::2], logits[1::2].argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_sampling_matches_softmax(temperature):
    params = SamplingParams(temperature=temperature)
    stat, dof = chi_square(sample_counts(params), ref_probs(ROW, params))
    assert stat < CHI2_CRITICAL_999[dof]


FILTERS = [
    SamplingParams(top_k=3),
    SamplingParams(top_k=1),
    SamplingParams(top_k=50),  # larger than V: no-op
    SamplingParams(top_p=0.5),
    SamplingParams(top_p=0.9, temperature=0.7),
    SamplingParams(top_p=1e-6),  # keeps the top token only
    SamplingParams(min_p=0.3),
    SamplingParams(top_k=5, top_p=0.8),
    SamplingParams(top_k=6, top_p=0.95, min_p=0.2, temperature=1.5),
]


@pytest.mark.parametrize("params", FILTERS, ids=short)
def test_filters_sample_only_kept_tokens_with_reference_probs(params):
    counts = sample_counts(params)
    kept = ref_kept(ROW, params)
    assert set(counts.nonzero().flatten().tolist()) == kept
    stat, dof = chi_square(counts, ref_probs(ROW, params))
    assert dof == 0 or stat < CHI2_CRITICAL_999[dof]


def test_filters_match_reference_row_by_row():
    # B = 64 rows, each with its own random logits and its own top-k / top-p / min-p / temperature.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 40, generator=gen) * 3
    params = [
        SamplingParams(
            temperature=[0.3, 1.0, 2.0][i % 3],
            top_k=[0, 1, 5, 17, 45, -1][i % 6],
            top_p=[1.0, 0.3, 0.75, 0.95][i % 4],
            min_p=[0.0, 0.0, 0.05, 0.4, 1.0][i % 5],
        )
        for i in range(64)
    ]
    batch = build(params, 40)
    filtered = apply_filters(logits / batch.temperature[:, None], batch)
    for i, p in enumerate(params):
        assert set(filtered[i].isfinite().nonzero().flatten().tolist()) == ref_kept(logits[i].tolist(), p), i


def test_top_p_keeps_one_token_even_when_top_token_exceeds_it():
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]] * 200)
    out = Sampler()(logits, build([SamplingParams(top_p=0.01)] * 200, 4))
    assert (out.token_ids == 0).all()


def test_penalties_match_reference():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 30, generator=gen) * 2
    prompts = [[1, 2, 3, 3], [], [5, 6], [0, 29]]
    outputs = [[3, 4, 4, 4, 7], [8, 8, 9], [], [29, 29, 1]]
    params = [
        SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.7),
        SamplingParams(repetition_penalty=0.8, frequency_penalty=-1.0),
        SamplingParams(repetition_penalty=2.0, presence_penalty=2.0),
        SamplingParams(),  # no penalty: untouched although it has history
    ]
    penalized = apply_penalties(logits.clone(), build(params, 30, prompts, outputs))
    expected = [ref_penalize(logits[i].tolist(), p, prompts[i], outputs[i]) for i, p in enumerate(params)]
    torch.testing.assert_close(penalized, torch.tensor(expected))


def test_logit_bias_steers_greedy_and_adds_exactly():
    logits = torch.zeros(2, 10)
    logits[:, 0] = 5.0
    params = [SamplingParams(temperature=0, logit_bias={7: 6.0}, logprobs=0),
              SamplingParams(temperature=0, logit_bias={0: -100}, logprobs=0)]
    out = Sampler()(logits, build(params, 10))
    assert out.token_ids.tolist() == [7, 1]  # row 1: all tied at 0 after the bias; argmax takes the first
    torch.testing.assert_close(out.logprobs, torch.log_softmax(logits, -1)[[0, 1], [7, 1]])  # raw, not biased


def test_min_tokens_bans_stop_ids_then_allows_them():
    logits = torch.zeros(1, 10)
    logits[0, [2, 5]] = 10.0  # the stop tokens are by far the likeliest
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[5])
    chosen = []
    for n_out in range(5):
        batch = build([params], 10, output_ids=[[9] * n_out], stop_ids=[[2, 5]])
        chosen.append(Sampler()(logits.clone(), batch).token_ids.item())  # the sampler may edit them in place
    assert chosen[:3] == [0, 0, 0] and chosen[3:] == [2, 2]


def test_min_tokens_with_ignore_eos_bans_only_own_stop_ids():
    logits = torch.zeros(1, 10)
    logits[0, 5] = 10.0
    logits[0, 2] = 9.0  # eos: does not end an ignore_eos request, so it is not banned
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[5], ignore_eos=True)
    out = Sampler()(logits, build([params], 10, stop_ids=[[2, 5]]))
    assert out.token_ids.item() == 2


def test_min_tokens_ban_holds_under_sampling():
    torch.manual_seed(5)
    logits = torch.zeros(500, 10)
    logits[:, 2] = 3.0
    params = SamplingParams(min_tokens=1, top_p=0.99)
    out = Sampler()(logits, build([params] * 500, 10, stop_ids=[[2]] * 500))
    assert not (out.token_ids == 2).any()


def test_logprobs_are_raw_log_softmax():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 64, generator=gen) * 4
    params = [
        SamplingParams(logprobs=5, temperature=0.5, top_k=3, repetition_penalty=1.5, logit_bias={1: 30.0}),
        SamplingParams(logprobs=2, temperature=0, presence_penalty=2.0),
        SamplingParams(logprobs=None, top_p=0.2),
        SamplingParams(logprobs=0, min_p=0.5, frequency_penalty=-2),
        SamplingParams(logprobs=20, temperature=3.0),
    ]
    out = Sampler()(logits, build(params, 64, [[1, 2]] * 5, [[3, 3, 4]] * 5))
    raw = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.logprobs, raw.gather(-1, out.token_ids[:, None]).squeeze(-1))
    top, ids = raw.topk(20, dim=-1)
    assert out.topn_ids.shape == out.topn_logprobs.shape == (5, 20)
    torch.testing.assert_close(out.topn_ids, ids)
    torch.testing.assert_close(out.topn_logprobs, top)


def test_without_logprobs_the_logits_are_left_alone():
    """No row asks for logprobs and none edits its logits: no copy, no log-softmax (each a pass over [B, V])."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(11))
    before = logits.clone()
    out = Sampler()(logits, build([SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_p=0.5, seed=1),
                                   SamplingParams(temperature=1.0, min_p=0.2)], 50))
    assert out.token_ids[0] == logits[0].argmax() and torch.equal(logits, before)
    assert out.topn_ids.shape == (3, 0) and out.logprobs.tolist() == [0.0, 0.0, 0.0]


def test_no_logprobs_requested_gives_empty_topn():
    out = Sampler()(torch.randn(3, 16), build([SamplingParams()] * 3, 16))
    assert out.topn_ids.shape == out.topn_logprobs.shape == (3, 0)
    assert out.token_ids.dtype == out.topn_ids.dtype == torch.long


# Seeded reproducibility: the seeded request's tokens over several steps must not depend on its row or neighbours.
SEEDED = SamplingParams(seed=7, temperature=1.2, top_p=0.95)
V_SEEDED, STEPS = 1000, 6


def seeded_tokens(batch_size: int, row: int, device="cpu", seed: int = 7) -> list[int]:
    """Run STEPS steps with the seeded request at `row` among random other requests; return its tokens."""
    step_logits = torch.Generator().manual_seed(100)  # the request's logits: the same in every scenario
    others = torch.Generator().manual_seed(batch_size * 31 + row)  # neighbours differ per scenario
    torch.manual_seed(batch_size)  # the global generator is in a different state per scenario too
    params = [_random_params(others) for _ in range(batch_size)]
    gens = [seeded_generator(p.seed, device) for p in params]
    params[row], gens[row] = dataclasses.replace(SEEDED, seed=seed), seeded_generator(seed, device)
    outputs = [[] for _ in range(batch_size)]
    for _ in range(STEPS):
        logits = torch.randn(batch_size, V_SEEDED, generator=others)
        logits[row] = torch.randn(V_SEEDED, generator=step_logits) * 0.5  # flat-ish: the noise decides
        batch = build(params, V_SEEDED, [[1, 2, 3]] * batch_size, outputs, gens, [[0]] * batch_size, device)
        token_ids = Sampler()(logits.to(device), batch).token_ids.tolist()
        outputs = [out + [t] for out, t in zip(outputs, token_ids)]
    return outputs[row]


def _random_params(gen: torch.Generator) -> SamplingParams:
    r = torch.rand(6, generator=gen).tolist()
    return SamplingParams(
        temperature=0.0 if r[0] < 0.2 else 0.5 + r[0],
        top_p=1.0 if r[1] < 0.5 else r[1],
        top_k=0 if r[2] < 0.5 else int(r[2] * 100),
        min_p=0.0 if r[3] < 0.5 else r[3] / 5,
        repetition_penalty=1.0 if r[4] < 0.5 else 1.0 + r[4],
        seed=None if r[5] < 0.5 else int(r[5] * 1000),
    )


def test_seeded_request_is_reproducible_whatever_the_batch():
    alone = seeded_tokens(1, 0)
    assert seeded_tokens(5, 0) == alone
    assert seeded_tokens(9, 3) == alone
    assert seeded_tokens(1, 0, seed=8) != alone  # the seed, not the logits, decides


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_request_is_reproducible_on_cuda():
    alone = seeded_tokens(1, 0, device="cuda")
    assert seeded_tokens(5, 0, device="cuda") == alone
    assert seeded_tokens(9, 3, device="cuda") == alone


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(64, 40, generator=gen) * 3
    params = [SamplingParams(top_k=[0, 5, 17][i % 3], top_p=[1.0, 0.75][i % 2], min_p=0.05 * (i % 4),
                             temperature=0 if i % 5 == 0 else 1.0, logprobs=3) for i in range(64)]
    out = Sampler()(logits.cuda(), build(params, 40, device="cuda"))
    for i, p in enumerate(params):
        want = {logits[i].argmax().item()} if p.is_greedy else ref_kept(logits[i].tolist(), p)
        assert out.token_ids[i].item() in want
    torch.testing.assert_close(out.topn_logprobs.cpu(), torch.log_softmax(logits, -1).topk(3, dim=-1).values)
    counts = sample_counts_cuda(FILTERS[-1])
    stat, dof = chi_square(counts.cpu(), ref_probs(ROW, FILTERS[-1]))
    assert stat < CHI2_CRITICAL_999[dof]


def sample_counts_cuda(params: SamplingParams) -> torch.Tensor:
    torch.cuda.manual_seed(0)
    logits = torch.tensor([ROW] * SAMPLES, device="cuda")
    out = Sampler()(logits, build([params] * SAMPLES, len(ROW), device="cuda"))
    return torch.bincount(out.token_ids, minlength=len(ROW))


def random_bitmask(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """[rows, ceil(V/32)] int32 with about one token in eight allowed."""
    allowed = torch.rand(rows, (vocab + 31) // 32 * 32, generator=torch.Generator().manual_seed(seed)) < 0.125
    weights = (1 << torch.arange(32, dtype=torch.int64))
    return (allowed.view(rows, -1, 32).long() * weights).sum(-1).to(torch.int64).sub(
        (allowed.view(rows, -1, 32)[..., 31].long() << 32)).to(torch.int32)


def test_bitmask_kernel_matches_reference():
    from engine.sampler import apply_bitmask, apply_bitmask_ref  # noqa: PLC0415

    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(2))
    mask, rows = random_bitmask(8, 1000, 3), [1, 4, 5]
    a, b = logits.clone(), logits.clone()
    apply_bitmask(a, mask, rows)
    apply_bitmask_ref(b, mask, rows)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(a[[0, 2, 3, 6, 7]], logits[[0, 2, 3, 6, 7]])


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_bitmask_rows_sample_allowed_tokens_and_leave_others_bit_identical(temperature):
    from engine.sampler import apply_bitmask_ref  # noqa: PLC0415

    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(4))
    params = [SamplingParams(temperature=temperature, seed=i, logprobs=2, top_p=0.9) for i in range(6)]
    def gens():
        return [seeded_generator(i, "cpu") for i in range(6)]

    plain = Sampler()(logits, build(params, 500, generators=gens()))
    batch = build(params, 500, generators=gens())
    batch.bitmask, batch.bitmask_rows = random_bitmask(6, 500, 5), [0, 3]
    masked = Sampler()(logits, batch)
    other = [1, 2, 4, 5]
    assert torch.equal(masked.token_ids[other], plain.token_ids[other])
    assert torch.equal(masked.logprobs[other], plain.logprobs[other])
    assert torch.equal(masked.topn_logprobs, plain.topn_logprobs)  # raw: before the mask, as every other edit
    check = logits.clone()
    apply_bitmask_ref(check, batch.bitmask, [0, 3])
    assert torch.isfinite(check[[0, 3]].gather(1, masked.token_ids[[0, 3], None])).all()
