"""The gateway's routing decisions, exactly: consistent hashing, reported load, avoided replicas, and the retry of a
request that fails before its first token (fake replicas; no cluster)."""

import asyncio

import grpc
import pytest

from cluster.config import load_config
from cluster.errors import ApiError
from cluster.grpc.auth import ApiKeys
from cluster.grpc.limits import Limits
from cluster.grpc.servicer import InferenceServicer, Refusal
from cluster.grpc.stream import SampleDelta, StreamEnd, StreamHead
from cluster.openai_output import Usage
from cluster.protocol import GenerateRequest, prefix_hashes
from cluster.router import HashRing, PrefixIndex, rank


def test_ring_is_consistent_and_moves_only_the_lost_replicas_keys():
    ring = HashRing(chunks=2)
    keys = [prefix_hashes(f"prompt {k} " * 60) for k in range(400)]  # 64-bit chained chunk hashes
    three = {tuple(h): ring.owner(h, ["a", "b", "c"]) for h in keys}
    assert {ring.owner(h, ["c", "b", "a"]) for h in keys[:5]} == {three[tuple(h)] for h in keys[:5]}  # order-free
    assert set(three.values()) == {"a", "b", "c"} and min(list(three.values()).count(r) for r in "abc") > 60
    two = {tuple(h): ring.owner(h, ["a", "b"]) for h in keys}
    moved = [h for h in three if three[h] != two[h]]
    assert moved and all(three[h] == "c" for h in moved)  # only c's keys moved
    assert ring.owner([5, 6, 7], ["a", "b"]) == ring.owner([5, 6, 99], ["a", "b"])  # keyed on the first 2 chunks
    assert ring.owner([], ["a"]) is None


def test_rank_uses_the_ring_for_unseen_prefixes_and_respects_load_and_kv():
    ring, index = HashRing(chunks=1), PrefixIndex()
    owner = ring.owner([42], ["a", "b"])
    other = "b" if owner == "a" else "a"
    assert rank([42], {"a": 0, "b": 0}, index, 4, ring) == [[owner], [other]]
    assert rank([42], {owner: 9, other: 0}, index, 4, ring) == [["a", "b"]]  # too busy: least loaded decides
    assert rank([42], {"a": 0, "b": 0}, index, 4, ring, kv_usage={owner: 0.99}, max_kv_cache_usage=0.95) == \
        [["a", "b"]]
    index.record([42], other)  # a learned owner wins over the ring
    assert rank([42], {"a": 0, "b": 0}, index, 4, ring) == [[other], [owner]]


def test_rank_puts_avoided_replicas_last():
    index = PrefixIndex()
    index.record([1], "a")
    assert rank([1], {"a": 0, "b": 0, "c": 0}, index, 4, avoid=["a"]) == [["b", "c"], ["a"]]
    assert rank([1], {"a": 0}, index, 4, avoid=["a"]) == [["a"]]  # the only replica is still tried


class FakeClient:
    """Replica streams by script: each attempt pops the next script (an exception or a list of items)."""

    def __init__(self, *scripts):
        self.scripts, self.requests = list(scripts), []

    def stream(self, req):
        self.requests.append((req.request_id, list(req.avoid_replicas)))
        req.routed_replica = f"replica-{len(self.requests)}"  # as the router does in the caller's process
        script = self.scripts.pop(0)

        async def gen():
            if isinstance(script, BaseException):
                raise script
            for item in script:
                yield item

        return gen()


class ActorDiedError(RuntimeError):
    """Named as Ray's: the servicer classifies failures by type name."""


GOOD = [StreamHead("replica-2", 3), SampleDelta(0, [5], "x", finish_reason="length"), StreamEnd(Usage(3, 1))]


def _servicer(client) -> InferenceServicer:
    config = load_config({"models": [{"name": "m", "path": "x", "routing": {"prefix_affinity": False}}]})
    return InferenceServicer(config, {"m": client}, None, ApiKeys([]), Limits(config.grpc))


def _req() -> GenerateRequest:
    return GenerateRequest("completion", "m", "gen-1", {}, True, prompt="hi", output="deltas")


@pytest.mark.parametrize("first", [ActorDiedError("replica gone"), [ApiError(429, "queue full")]],
                         ids=["replica-died", "queue-full"])
def test_a_failure_before_the_first_token_is_retried_once_elsewhere(first):
    client = FakeClient(first, GOOD)
    stream, head = asyncio.run(_servicer(client)._start(_req()))
    assert head.replica == "replica-2"
    assert client.requests == [("gen-1", []), ("gen-1~retry", ["replica-1"])]


def test_a_second_failure_ends_the_call():
    client = FakeClient(ActorDiedError("gone"), ActorDiedError("gone too"))
    with pytest.raises(Refusal) as err:
        asyncio.run(_servicer(client)._start(_req()))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and len(client.requests) == 2


def test_bad_input_is_not_retried():
    client = FakeClient([ApiError(400, "prompt is too long", param="prompt")])
    with pytest.raises(Refusal) as err:
        asyncio.run(_servicer(client)._start(_req()))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message.startswith("prompt")
    assert len(client.requests) == 1
