"""Two models of two replicas each behind the gateway: prefix affinity measured against random routing in the same
run, and a replica killed mid-run."""

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cluster.conftest import API_KEY, model_entry
from tests.grpc.conftest import AUTH, deploy

PREFIXES = 6  # distinct system prompts ...
REPEATS = 4  # ... each sent this many times, interleaved
TOPICS = ["astronomy", "baking", "chess", "databases", "estuaries", "fencing"]


def system_prompt(k: int) -> str:
    return f"You are an expert on {TOPICS[k]}. " + f"Answer questions about {TOPICS[k]} carefully and briefly. " * 12


@pytest.fixture(scope="module")
def app(ray_cluster, stubs, tiny_model):
    from ray import serve

    small = {"num_replicas": 2, "num_cpus": 0.25}  # 4 replicas beside the session app's one, on 2 CPUs
    config = {"models": [model_entry("affine", tiny_model, **small),
                         model_entry("random", tiny_model, routing={"prefix_affinity": False}, **small)],
              "auth": {"api_keys": [API_KEY]}}
    app = deploy("replicas", config, stubs)
    yield app
    serve.delete(app.name)


def chat(stub, pb, model: str, system: str, user: str, max_tokens: int = 1, timeout: float = 60):
    req = pb.ChatRequest(model=model, messages=[pb.Message(role=pb.ROLE_SYSTEM, content=system),
                                                pb.Message(role=pb.ROLE_USER, content=user)],
                         sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    call = stub.Chat(req, metadata=AUTH, timeout=timeout)
    messages = list(call)
    return messages[-1].usage, dict(call.initial_metadata())["x-gptoss-replica"]


def test_prefix_affinity_beats_random_routing(app, stubs):
    stub, pb = app.stub(), stubs.pb
    cached, prompt, replicas = {"affine": 0, "random": 0}, {"affine": 0, "random": 0}, {"affine": {}, "random": {}}
    for r in range(REPEATS):
        for k in range(PREFIXES):
            for model in ("affine", "random"):  # the same traffic to both, interleaved
                usage, replica = chat(stub, pb, model, system_prompt(k), f"Question {r}: why?")
                cached[model] += usage.cached_tokens
                prompt[model] += usage.prompt_tokens
                replicas[model].setdefault(k, set()).add(replica)
    rate = {m: cached[m] / prompt[m] for m in cached}
    print(f"prefix-cache hit rate: gateway routing {rate['affine']:.3f}, random routing {rate['random']:.3f}")
    assert all(len(r) == 1 for r in replicas["affine"].values())  # each prefix stayed on one replica ...
    assert len(set().union(*replicas["affine"].values())) == 2  # ... and the prefixes were spread over both
    assert rate["affine"] > rate["random"] + 0.05, rate


def _stream(stub, pb, i: int, out: dict, first: threading.Event) -> None:
    req = pb.ChatRequest(model="affine", messages=[pb.Message(role=pb.ROLE_USER, content=f"Tell story {i}.")],
                         sampling=pb.SamplingParams(max_tokens=150, ignore_eos=True))
    call = stub.Chat(req, metadata=AUTH, timeout=120)
    tokens = 0
    try:
        for message in call:
            out["replica"] = dict(call.initial_metadata())["x-gptoss-replica"]
            tokens += len(message.token_ids)
            first.set()
        out["result"] = ("ok", tokens)
    except grpc.RpcError as err:
        out["result"] = (err.code(), tokens)
    first.set()


def test_killing_a_replica_mid_run(app, stubs):
    import ray

    stub, pb = app.stub(), stubs.pb
    outs, threads = [{} for _ in range(4)], []
    for i, out in enumerate(outs):  # one at a time, so the router sees the load and spreads them
        first = threading.Event()
        threads.append(threading.Thread(target=_stream, args=(stub, pb, i, out, first), daemon=True))
        threads[-1].start()
        assert first.wait(60) and "replica" in out, out
    running = [out for out in outs if "result" not in out]  # 150 tokens take seconds: all of them, normally
    assert running, outs
    victim = running[0]["replica"]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{app.name}#LLMServer:affine#{victim}", namespace="serve"), no_restart=True)

    served_by = set()  # requests that start after the kill
    for i in range(4):
        usage, replica = chat(stub, pb, "affine", "Be brief.", f"After the kill {i}", max_tokens=4)
        assert usage.completion_tokens == 4
        served_by.add(replica)
    assert victim not in served_by

    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    for out in outs:
        if out["replica"] == victim and any(out is r for r in running):
            assert out["result"][0] == grpc.StatusCode.UNAVAILABLE, out  # ended, promptly, with UNAVAILABLE
        elif out["replica"] != victim:
            assert out["result"] == ("ok", 150), out  # the other replica's streams were untouched
    health = health_pb2_grpc.HealthStub(app.channel())
    assert health.Check(health_pb2.HealthCheckRequest(service=stubs.service), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert chat(stub, pb, "random", "Be brief.", "Still there?", max_tokens=2)[0].completion_tokens == 2
    print(f"killed {victim}: {sum(o['replica'] == victim for o in outs)} stream(s) ended UNAVAILABLE, "
          f"{sum(o['replica'] != victim for o in outs)} finished; later requests served by {served_by}")
