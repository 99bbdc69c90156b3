"""The engine loop end to end on CPU (fp32) through `LLM`: batching, preemption, prefix caching, n > 1, admission."""

import random

import pytest

from engine import LLM, SamplingParams
from engine.request import merge_outputs
from engine.sampling_params import MAX_LOGPROBS, MAX_N
from tests.hf_oracle import hf_greedy

GREEDY = SamplingParams(temperature=0, max_tokens=12, logprobs=3, ignore_eos=True)


def mixed_prompts(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(201088) for _ in range(rng.randint(3, 70))]} for _ in range(n)]


def assert_same(a, b):
    """Same tokens; logprobs of every reported token within 1e-4."""
    assert a.token_ids == b.token_ids
    for x, y in zip(a.logprobs, b.logprobs):
        assert x.keys() == y.keys()
        assert all(abs(x[k] - y[k]) < 1e-4 for k in x)


@pytest.fixture(scope="module")
def prompts():
    return mixed_prompts(34)


@pytest.fixture(scope="module")
def alone(tiny_model, prompts):
    """Each request run by itself."""
    llm = LLM(tiny_model, dtype="float32", device="cpu")
    return [llm.generate(p, GREEDY)[0].outputs[0] for p in prompts]


def test_batch_invariance_and_transformers(tiny_model, prompts, alone):
    llm = LLM(tiny_model, dtype="float32", device="cpu", max_num_batched_tokens=256)
    together = llm.generate(prompts, GREEDY)
    for single, batched in zip(alone, together):
        assert_same(batched.outputs[0], single)
    for p, single in list(zip(prompts, alone))[:6]:
        assert single.token_ids == hf_greedy(tiny_model, p["prompt_token_ids"], GREEDY.max_tokens)[0]


def test_preemption_keeps_outputs_identical(tiny_model, prompts, alone):
    # 48 blocks of 16 tokens for 34 requests needing ~6 each: the scheduler must preempt and recompute
    llm = LLM(tiny_model, dtype="float32", device="cpu", kv_cache_memory=48 * 4096, max_num_batched_tokens=128)
    assert llm.engine.kv.pool.num_blocks == 48
    together = llm.generate(prompts, GREEDY)
    assert llm.engine.stats().num_preemptions > 0
    for single, batched in zip(alone, together):
        assert_same(batched.outputs[0], single)
    assert llm.engine.kv.pool.num_free == 47  # every block back


def test_prefix_caching_hits_and_changes_nothing(tiny_model):
    prefix = list(range(1000, 1070))
    prompts = [{"prompt_token_ids": prefix + [7 + i, 8 + i]} for i in range(6)]
    cached = LLM(tiny_model, dtype="float32", device="cpu")
    first = cached.generate(prompts[:1], GREEDY)
    rest = cached.generate(prompts[1:], GREEDY)
    stats = cached.engine.stats()
    assert stats.prefix_cache_hits >= 5 * 64 and rest[0].num_cached_tokens == 64
    plain = LLM(tiny_model, dtype="float32", device="cpu", enable_prefix_caching=False)
    expected = plain.generate(prompts, GREEDY)
    assert plain.engine.stats().prefix_cache_hits == 0
    for got, want in zip(first + rest, expected):
        assert_same(got.outputs[0], want.outputs[0])


def test_n_samples_share_the_prompt_and_differ(tiny_model):
    llm = LLM(tiny_model, dtype="float32", device="cpu")
    out = llm.generate({"prompt_token_ids": list(range(40))}, SamplingParams(n=3, max_tokens=6, seed=5))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) == 3
    assert llm.engine.stats().prefix_cache_hits >= 2 * 32  # samples 1 and 2 reuse sample 0's prompt blocks
    again = llm.generate({"prompt_token_ids": list(range(40))}, SamplingParams(n=3, max_tokens=6, seed=5))[0]
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in out.outputs]


@pytest.mark.parametrize("params, field", [
    (dict(max_tokens=131072), "max_tokens"),
    (dict(logprobs=MAX_LOGPROBS + 1), "logprobs"),
    (dict(n=MAX_N + 1), "n"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
])
def test_invalid_parameters_name_the_field(tiny_model, params, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        LLM.generate(_shared_llm(tiny_model), {"prompt_token_ids": [1, 2, 3]}, SamplingParams(**params))


def test_request_larger_than_the_cache_is_rejected(tiny_model):
    llm = LLM(tiny_model, dtype="float32", device="cpu", kv_cache_memory=8 * 4096)
    with pytest.raises(ValueError, match="needs .* KV blocks but the cache holds 7; lower max_tokens"):
        llm.generate({"prompt_token_ids": list(range(100))}, SamplingParams(max_tokens=50))


_LLMS = {}


def _shared_llm(path):
    if path not in _LLMS:
        _LLMS[path] = LLM(path, dtype="float32", device="cpu")
    return _LLMS[path]


# ---- async scheduling ----
ABORT_AT = {"m2": 3, "m3": 5, "m6#1": 2}  # request -> abort it once it has this many tokens
ABORT_BEFORE_START = "m10"
STOP_PROMPT = {"prompt_token_ids": list(range(500, 530))}


def mixed_workload(stop: str, stop_token: int) -> list[tuple[dict, SamplingParams]]:
    """Greedy and seeded requests with logprobs, n = 3, penalties with min_tokens, a stop string, a stop token,
    max_tokens from 1 to 24; prompts of 3 to 70 tokens."""
    kinds = [
        SamplingParams(temperature=0, max_tokens=12, logprobs=3, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=10, n=3, logprobs=2),
        SamplingParams(temperature=0.7, seed=5, max_tokens=9, repetition_penalty=1.2, frequency_penalty=0.4,
                       presence_penalty=0.3, min_tokens=4, logprobs=1),
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=1, logprobs=0),
    ]
    work = [(p, kinds[i % len(kinds)]) for i, p in enumerate(mixed_prompts(14, seed=3))]
    work[7] = (STOP_PROMPT, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[stop], logprobs=2))
    work[8] = (STOP_PROMPT, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_token], ignore_eos=True))
    return work


def run_mixed(tiny_model, stop: str, stop_token: int, async_scheduling: bool):
    """The mixed workload through EngineCore's loop on a cache small enough to preempt, with aborts at fixed
    points of each request's own progress (so the two modes abort at the same token)."""
    llm = LLM(tiny_model, dtype="float32", device="cpu", kv_cache_memory=16 * 4096, max_num_batched_tokens=128,
              async_scheduling=async_scheduling)
    core = llm.engine
    work = mixed_workload(stop, stop_token)
    groups = [core.make_requests(p, sp, request_id=f"m{i}") for i, (p, sp) in enumerate(work)]
    core.add([r for g in groups for r in g])
    core.abort([ABORT_BEFORE_START])
    while core.has_work:
        for r in core.step():
            if not r.finished and len(r.output_token_ids) >= ABORT_AT.get(r.request_id, 1 << 30):
                core.abort([r.request_id])
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks - 1 and not core.scheduler.requests
    core.shutdown()
    return [merge_outputs(g, g, delta=False) for g in groups], stats


def test_async_scheduling_gives_the_synchronous_outputs(tiny_model):
    full = _shared_llm(tiny_model).generate(STOP_PROMPT, SamplingParams(temperature=0, max_tokens=20,
                                                                         ignore_eos=True))[0].outputs[0]
    stop, stop_token = full.text[len(full.text) // 2: len(full.text) // 2 + 3], full.token_ids[5]
    sync, sync_stats = run_mixed(tiny_model, stop, stop_token, async_scheduling=False)
    asyn, async_stats = run_mixed(tiny_model, stop, stop_token, async_scheduling=True)
    assert sync_stats.num_preemptions > 0 and async_stats.num_preemptions > 0
    assert {o.finish_reason for r in sync for o in r.outputs} == {"length", "stop", "abort"}
    assert sync[7].outputs[0].stop_reason == stop and sync[8].outputs[0].stop_reason == stop_token
    assert sync[10].outputs[0].token_ids == [] and len(sync[6].outputs[1].token_ids) == ABORT_AT["m6#1"]
    for a, b in zip(asyn, sync, strict=True):
        assert len(a.outputs) == len(b.outputs)
        for x, y in zip(a.outputs, b.outputs):
            assert (x.text, x.finish_reason, x.stop_reason) == (y.text, y.finish_reason, y.stop_reason)
            if y.logprobs is not None:
                assert_same(x, y)
            else:
                assert x.token_ids == y.token_ids
