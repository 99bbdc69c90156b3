"""The routing decisions, exactly: consistent hashing, reported load, avoided replicas (no cluster; the retry of a
request that fails before its first token is tested in tests/cluster/test_frontdoor.py)."""

import grpc
import pytest

from cluster.errors import ApiError
from cluster.grpc.servicer import Refusal
from cluster.protocol import prefix_hashes
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


@pytest.mark.parametrize("err,code,hinted", [
    (ApiError(400, "prompt is too long", param="prompt"), grpc.StatusCode.INVALID_ARGUMENT, False),
    (ApiError(404, "no such model", param="model"), grpc.StatusCode.NOT_FOUND, False),
    (ApiError(408, "deadline"), grpc.StatusCode.DEADLINE_EXCEEDED, False),
    (ApiError(429, "engine queue full", code="rate_limit_exceeded"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (ApiError(503, "queue full", code="server_overloaded"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (ApiError(503, "shutting down", code="server_shutting_down"), grpc.StatusCode.UNAVAILABLE, True),
    (ApiError(503, "replica gone", code="replica_unavailable"), grpc.StatusCode.UNAVAILABLE, False),
    (ApiError(500, "bug", "server_error"), grpc.StatusCode.INTERNAL, False),
])
def test_front_door_errors_map_onto_grpc_statuses(err, code, hinted):
    refusal = Refusal.of(err, retry_after_ms=1500)
    assert refusal.code == code and (refusal.retry_after_ms == 1500) == hinted
    assert refusal.message.startswith(err.param or "")
