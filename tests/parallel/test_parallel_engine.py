"""Multi-process engines on CPU (gloo): the same tokens and logprobs as one process under concurrent load with
preemption, for TP, TP + EP, DP attention x TP with EP over 4 ranks, and TP past the KV head count; with the mp
and the Ray launchers. Each rank's weights are counted after loading. A killed or hung rank fails every
in-flight request within the collective timeout and turns the engine unhealthy; nothing hangs."""

import asyncio
import os
import random
import re
import signal
import time

import pytest
import torch

from engine import LLM, SamplingParams
from engine.async_llm import AsyncLLM, EngineDeadError
from engine.parallel.loading import tensor_bytes
from engine.weights.checkpoint import load_weights
from tests.parallel.conftest import SPEC

pytestmark = pytest.mark.timeout(300)

BLOCK_BYTES = 2 * 16 * 16 * 4  # one KV block (16 tokens) of one KV head of 16 dims in fp32, keys and values
KV_BLOCKS = 24  # per attention group: 12 requests of up to 50 tokens need ~5 blocks each, so they preempt
DP_KV_BLOCKS = 12  # per group when two groups share the 12 requests
GREEDY = SamplingParams(temperature=0, max_tokens=10, logprobs=3, ignore_eos=True)
ASYNC = dict(async_scheduling=True)  # step N+1 sent before step N is read, PENDING ids broadcast in the TP group
CASES = {  # name -> engine arguments (async scheduling is off by default on CPU)
    "tp2": dict(tensor_parallel_size=2),  # experts sliced along I
    "tp2-ep2": dict(tensor_parallel_size=2, enable_expert_parallel=True, **ASYNC),
    "tp2-dp2-ep4": dict(tensor_parallel_size=2, data_parallel_size=2, enable_expert_parallel=True, **ASYNC),
    "tp4-ep4-packed": dict(tensor_parallel_size=4, enable_expert_parallel=True, backend="kernels",  # KV replicated
                           **ASYNC),
    "tp2-ep2-alltoall": dict(tensor_parallel_size=2, enable_expert_parallel=True, moe_dispatch="alltoall"),
    "tp2-dp2-ep4-alltoall": dict(tensor_parallel_size=2, data_parallel_size=2, enable_expert_parallel=True,
                                 moe_dispatch="alltoall", backend="kernels", **ASYNC),
    "tp2-dp2-ep4-sync": dict(tensor_parallel_size=2, data_parallel_size=2, enable_expert_parallel=True),
}


def workload() -> tuple[list[dict], list[SamplingParams]]:
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(SPEC.vocab) for _ in range(rng.randint(3, 40))]} for _ in range(12)]
    seeded = [SamplingParams(temperature=0.8, seed=7 + i, max_tokens=10, logprobs=3, ignore_eos=True) for i in range(2)]
    return prompts, [GREEDY] * 10 + seeded


@pytest.fixture(scope="module")
def expected(parallel_model):
    """One process (batch invariance is the engine tests' business): (tokens, logprobs) per request."""
    outs = LLM(parallel_model, dtype="float32", device="cpu").generate(*workload())
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()


def assert_same(got, want):
    """Same tokens; every reported logprob within 1e-4 (fp32, different summation orders)."""
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(got, want, strict=True):
        assert tokens == want_tokens
        for a, b in zip(logprobs, want_logprobs, strict=True):
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)


async def collect(engine: AsyncLLM, prompt, params, rid: str):
    tokens, logprobs = [], []
    async for out in engine.generate(prompt, params, request_id=rid):
        tokens += out.outputs[0].token_ids
        logprobs += out.outputs[0].logprobs
    return tokens, logprobs


def run_concurrently(engine: AsyncLLM):
    async def main():
        return await asyncio.gather(*(collect(engine, p, sp, f"r{i}") for i, (p, sp) in enumerate(zip(*workload()))))

    return asyncio.run(main())


def async_engine(model, launcher: str, kv_blocks: int = KV_BLOCKS, **args) -> AsyncLLM:
    return AsyncLLM(model, dtype="float32", device="cpu", distributed_executor_backend=launcher,
                    kv_cache_memory=kv_blocks * BLOCK_BYTES, max_num_batched_tokens=64, **args)


def settled_stats(engine: AsyncLLM):
    """The engine's stats once the last finished request has been retired (they trail the outputs a little)."""
    for _ in range(100):
        stats = engine.stats()
        if stats.num_running == stats.num_waiting == 0:
            break
        time.sleep(0.05)
    return stats


def check_memory(engine: AsyncLLM, model, args: dict):
    """Each rank's weights: experts / ranks (EP) or / ranks plus the b2 copy (I-sliced), attention and vocab / TP;
    norms and routers replicated. Prints the table (pytest -s)."""
    _, full = load_weights(model, torch.float32, dequantize_experts=args.get("backend") != "kernels")
    whole = tensor_bytes(full)
    tp, world = args["tensor_parallel_size"], args["tensor_parallel_size"] * args.get("data_parallel_size", 1)
    print(f"\n{args}: one process {whole}")
    for report in engine.core.executor.reports:
        b = report.tensor_bytes
        print(f"  rank {report.rank} (pid {report.pid}): {b}  ({b['total'] / whole['total']:.3f} of one process)")
        b2 = 0 if args.get("enable_expert_parallel") else SPEC.layers * SPEC.experts * SPEC.hidden * 4
        assert b["experts"] == (whole["experts"] - b2) // world + b2
        assert b["vocab"] * tp == whole["vocab"] and b["replicated"] == whole["replicated"]
        assert b["attention"] < whole["attention"] / min(tp, SPEC.kv_heads) + SPEC.layers * SPEC.hidden * 4


@pytest.mark.parametrize("backend, case", [
    ("mp", "tp2-ep2"),
    pytest.param("mp", "tp2", marks=pytest.mark.slow),
    pytest.param("mp", "tp2-dp2-ep4", marks=pytest.mark.slow),
    pytest.param("mp", "tp4-ep4-packed", marks=pytest.mark.slow),
    pytest.param("mp", "tp2-ep2-alltoall", marks=pytest.mark.slow),
    pytest.param("mp", "tp2-dp2-ep4-alltoall", marks=pytest.mark.slow),
    pytest.param("mp", "tp2-dp2-ep4-sync", marks=pytest.mark.slow),
    pytest.param("ray", "tp2-ep2", marks=pytest.mark.slow),
    pytest.param("ray", "tp2-dp2-ep4", marks=pytest.mark.slow),
])
def test_same_outputs_as_one_process_under_load(parallel_model, expected, backend, case, request):
    if backend == "ray":
        request.getfixturevalue("ray_local")
    dp = CASES[case].get("data_parallel_size", 1)
    engine = async_engine(parallel_model, backend, KV_BLOCKS if dp == 1 else DP_KV_BLOCKS, **CASES[case])
    try:
        assert_same(run_concurrently(engine), expected)
        stats = settled_stats(engine)
        assert stats.num_preemptions > 0  # the small cache forced recomputation
        assert stats.num_free_blocks == stats.num_total_blocks - dp  # every block back (one null block per group)
        check_memory(engine, parallel_model, CASES[case])
        assert engine.healthy
    finally:
        engine.shutdown()
    assert _gone_within(engine.core.executor.pids(), 15)


@pytest.mark.slow
def test_offline_llm_with_tensor_parallelism(parallel_model, expected):
    llm = LLM(parallel_model, dtype="float32", device="cpu", tensor_parallel_size=2,
              kv_cache_memory=KV_BLOCKS * BLOCK_BYTES)
    try:
        outs = llm.generate(*workload())
        assert_same([(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs], expected)
    finally:
        llm.engine.shutdown()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def fail_a_rank_mid_generation(engine: AsyncLLM, sig: int, rank: int = 1) -> list:
    """Start 6 long streams; once every one has tokens, send `sig` to `rank`; return (seconds to the error,
    error) for every stream."""
    pids = engine.core.executor.pids()
    params = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)

    async def stream(i, started: asyncio.Event, killed: list):
        try:
            async for _ in engine.generate({"prompt_token_ids": [i + 1] * 12}, params, request_id=f"long{i}"):
                started.set()
        except EngineDeadError as e:
            return time.monotonic() - killed[0], e
        return None, "finished without an error"

    async def main():
        events, killed = [asyncio.Event() for _ in range(6)], [0.0]
        tasks = [asyncio.create_task(stream(i, events[i], killed)) for i in range(6)]
        started = asyncio.gather(*(e.wait() for e in events))
        await asyncio.wait([started, *tasks], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert started.done(), [t.result() for t in tasks if t.done()]  # a stream ended before the kill
        killed[0] = time.monotonic()
        os.kill(pids[rank], sig)
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    return asyncio.run(main())


@pytest.mark.parametrize("backend, sig, what", [
    ("mp", signal.SIGKILL, "exited with code -9"),
    ("mp", signal.SIGSTOP, "rank 0 failed in 'execute'.*Timed out"),  # a hung rank: the collective times out
    pytest.param("ray", signal.SIGKILL, "rank 1 .* died during 'execute'", marks=pytest.mark.slow),
])
def test_a_dead_or_hung_rank_fails_every_request_within_the_timeout(parallel_model, backend, sig, what, request):
    if backend == "ray":
        request.getfixturevalue("ray_local")
    timeout = 5.0
    engine = async_engine(parallel_model, backend, kv_blocks=256, tensor_parallel_size=2,
                          enable_expert_parallel=True, collective_timeout_s=timeout, **ASYNC)
    pids = engine.core.executor.pids()
    try:
        results = fail_a_rank_mid_generation(engine, sig)
        for seconds, error in results:
            assert isinstance(error, EngineDeadError), error
            assert seconds < timeout + 2
            assert re.search(what, str(error)), str(error)
        assert not engine.healthy
        assert _gone_within(pids, 15)  # the executor stopped every rank, the hung one included
        with pytest.raises(EngineDeadError, match="not running"):
            asyncio.run(anext(engine.generate({"prompt_token_ids": [1, 2]}, GREEDY)))
    finally:
        engine.shutdown()
        for pid in pids:  # a stopped rank the executor could not reach
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
