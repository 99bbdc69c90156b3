"""AsyncLLM on CPU (fp32): concurrent streams, aborts (explicit and by walking away), stop strings, admission errors."""

import asyncio

import pytest

from engine import LLM, SamplingParams
from engine.async_llm import AsyncLLM

_LLMS = {}


def _shared_llm(path):
    if path not in _LLMS:
        _LLMS[path] = LLM(path, dtype="float32", device="cpu")
    return _LLMS[path]


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
