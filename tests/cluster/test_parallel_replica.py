"""A replica whose engine spans ranks: tensor parallel 2 with expert parallelism, the ranks Ray actors in the
replica's placement group (Serve reserves one bundle for the replica and one per rank), or local processes of the
replica (the mp backend).

Oracle: the single-process engine (engine.LLM) on the same checkpoint: greedy tokens and their logprobs through the
official openai client equal its own. A killed rank fails the request it was serving with an error (no hang), the
health check turns the replica unhealthy and Serve replaces it with one that serves again.
"""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil
import pytest

from tests.cluster.conftest import model_entry

PROMPTS = ["The capital of France is", "1 2 3 4 5 6 7 8", "Once upon a time, in a land far away,", "ok"]
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def base(serve_app, tiny_model):
    parallel = {"tensor_parallel_size": 2, "enable_expert_parallel": True, "distributed_executor_backend": "ray",
                "cpus_per_rank": 0.5, "collective_timeout_s": 10}
    return serve_app({"models": [model_entry("tiny-tp", tiny_model, parallel=parallel, health_check_period_s=1)]},
                     "tp")


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def expected(tiny_model):
    from engine import LLM, SamplingParams

    llm = LLM(model=tiny_model, dtype="float32", device="cpu", kv_cache_memory=32 << 20)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, logprobs=0, ignore_eos=True))
    return {p: (o.outputs[0].text, [lp[t] for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
            for p, o in zip(PROMPTS, outs)}


@pytest.fixture(scope="module")
def mp_client(serve_app, tiny_model):
    """The same engine with its ranks as local processes of the replica (the replica's node, its CPUs/GPUs)."""
    parallel = {"tensor_parallel_size": 2, "enable_expert_parallel": True, "distributed_executor_backend": "mp"}
    base = serve_app({"models": [model_entry("tiny-tp", tiny_model, parallel=parallel)]}, "tp-mp")
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def complete(client, prompt: str):
    out = client.completions.create(model="tiny-tp", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                    logprobs=0, extra_body={"ignore_eos": True})
    return out.choices[0].text, out.choices[0].logprobs.token_logprobs


def rank_processes() -> list[psutil.Process]:
    """The rank actors on this machine (Ray titles an actor's process ray::<class>)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::Worker"):
            found.append(proc)
    return found


def assert_same(got, want):
    (text, logprobs), (want_text, want_logprobs) = got, want
    assert text == want_text
    assert logprobs == pytest.approx(want_logprobs, abs=1e-4)


def test_greedy_tokens_and_logprobs_equal_one_process_under_concurrent_load(client, expected):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: (p, complete(client, p)), PROMPTS * 2))
    for prompt, got in results:
        assert_same(got, expected[prompt])


def test_mp_ranks_beside_the_replica_give_the_same_tokens(mp_client, expected):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: (p, complete(mp_client, p)), PROMPTS))
    for prompt, got in results:
        assert_same(got, expected[prompt])


def test_the_ranks_are_actors_in_the_replicas_placement_group(base):
    import ray

    groups = [g for g in ray.util.placement_group_table().values()
              if g["state"] == "CREATED" and len(g["bundles"]) == 3]
    assert len(groups) == 1, groups
    bundles = [groups[0]["bundles"][i] for i in range(3)]
    assert bundles == [{"CPU": 0.5}] * 3  # the replica's bundle, then one per rank
    assert len(rank_processes()) == 2


def test_a_killed_rank_fails_its_request_and_serve_replaces_the_replica(client, expected):
    victims = rank_processes()
    assert len(victims) == 2
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(lambda: client.completions.create(model="tiny-tp", prompt="count:", max_tokens=2000,
                                                             temperature=0, extra_body={"ignore_eos": True}))
        time.sleep(1.0)  # the request is decoding
        os.kill(victims[1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(openai.APIError):
            long.result(timeout=60)
        assert time.monotonic() - start < 30
    end = time.monotonic() + 180  # health check fails -> Serve starts a new replica (its ranks load again)
    while True:
        try:
            assert_same(complete(client, PROMPTS[0]), expected[PROMPTS[0]])
            break
        except openai.APIError:
            assert time.monotonic() < end, "no healthy replica three minutes after a rank died"
            time.sleep(1)
    assert {p.pid for p in rank_processes()}.isdisjoint(v.pid for v in victims)
