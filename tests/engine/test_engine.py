"""The serving engine end to end on CPU (fp32): batching, preemption, prefix caching, aborts, n > 1, stops."""

import asyncio
import random

import pytest

from engine import LLM, SamplingParams
from engine.async_llm import AsyncLLM
from engine.sampling_params import MAX_LOGPROBS, MAX_N
from tests.engine.hf_oracle import hf_greedy

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


# ---- AsyncLLM ----
def run(coro):
    return asyncio.run(coro)


async def collect(engine, prompt, params, rid):
    text, tokens, last = [], [], None
    async for out in engine.generate(prompt, params, request_id=rid):
        for o in out.outputs:
            text.append(o.text)
            tokens += o.token_ids
        last = out
    return "".join(text), tokens, last


def test_async_streams_abort_and_return_every_block(tiny_model):
    async def main():
        engine = AsyncLLM(tiny_model, dtype="float32", device="cpu")
        try:
            params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
            tasks = [asyncio.create_task(collect(engine, {"prompt_token_ids": [i + 1] * 30}, params, f"r{i}"))
                     for i in range(6)]

            async def abort_after(rid, n):
                seen = 0
                async for _ in engine.generate({"prompt_token_ids": [9] * 20}, params, request_id=rid):
                    seen += 1
                    if seen == n:
                        await engine.abort(rid)
                return rid

            aborted = await asyncio.gather(abort_after("a1", 2), abort_after("a2", 5))
            done = await asyncio.gather(*tasks)
            assert aborted == ["a1", "a2"]
            assert all(len(tokens) == 40 and last.outputs[0].finish_reason == "length" for _, tokens, last in done)
            # a caller that walks away mid-stream (client disconnect) aborts its request too
            gen = engine.generate({"prompt_token_ids": [3] * 10}, params, request_id="gone")
            await gen.__anext__()
            await gen.aclose()
            for _ in range(100):
                await asyncio.sleep(0.02)
                stats = engine.stats()
                if stats.num_running == 0 and stats.num_waiting == 0:
                    break
            assert stats.num_free_blocks == stats.num_total_blocks - 1
            assert engine.healthy
        finally:
            engine.shutdown()

    run(main())


def test_async_stop_string_never_leaks_and_matches_sync(tiny_model):
    llm = _shared_llm(tiny_model)
    prompt = {"prompt_token_ids": list(range(500, 530))}
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]

    async def main():
        engine = AsyncLLM(tiny_model, dtype="float32", device="cpu")
        try:
            params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[stop])
            return await collect(engine, prompt, params, "s")
        finally:
            engine.shutdown()

    text, _, last = run(main())
    assert text == expected and stop not in text
    assert last.outputs[0].finish_reason == "stop" and last.outputs[0].stop_reason == stop


def test_async_rejects_bad_input_and_full_queue(tiny_model):
    async def main():
        engine = AsyncLLM(tiny_model, dtype="float32", device="cpu", max_waiting_requests=0)
        try:
            with pytest.raises(ValueError, match="top_p"):
                await anext(engine.generate("hi", SamplingParams(top_p=2)))
            from engine.async_llm import QueueFullError
            with pytest.raises(QueueFullError, match="max_waiting_requests=0"):
                await anext(engine.generate("hi", SamplingParams(max_tokens=2)))
            assert engine.healthy
        finally:
            engine.shutdown()

    run(main())
