"""The front door, exactly (fake replica streams; no cluster): one retry elsewhere before the first token, what is
not retried, the deadline and arrival stamped for the replica, the drain refusal, and the in-flight count."""

import asyncio
import time

import pytest

from cluster.config import load_config
from cluster.errors import ApiError
from cluster.frontdoor import FrontDoor
from cluster.output.deltas import SampleDelta, StreamEnd, StreamHead
from cluster.output.openai import Usage
from cluster.protocol import GenerateRequest


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
    """Named as Ray's: the front door classifies failures by type name."""


GOOD = [StreamHead("replica-2", 3), SampleDelta(0, [5], "x", finish_reason="length"), StreamEnd(Usage(3, 1))]


def _door(client, **limits) -> FrontDoor:
    config = load_config({"models": [{"name": "m", "path": "x", "routing": {"prefix_affinity": False}}],
                          "limits": {"request_timeout_s": 30, **limits}})
    return FrontDoor(config, {"m": client})


def _req() -> GenerateRequest:
    return GenerateRequest("completion", "m", "gen-1", {}, True, prompt="hi", output="deltas")


def _open(door, req=None, timeout=None):
    async def run():
        call = await door.open(req or _req(), timeout)
        items = [item async for item in call]
        await call.close()
        return call, items

    return asyncio.run(run())


@pytest.mark.parametrize("first", [ActorDiedError("replica gone"), [ApiError(429, "queue full")]],
                         ids=["replica-died", "queue-full"])
def test_a_failure_before_the_first_token_is_retried_once_elsewhere(first):
    client = FakeClient(first, GOOD)
    door = _door(client)
    call, items = _open(door)
    assert call.head.replica == "replica-2" and items == GOOD[1:]
    assert client.requests == [("gen-1", []), ("gen-1~retry", ["replica-1"])]
    assert door.in_flight == 0


def test_a_second_failure_ends_the_call():
    client = FakeClient(ActorDiedError("gone"), ActorDiedError("gone too"))
    door = _door(client)
    with pytest.raises(ApiError) as err:
        _open(door)
    assert (err.value.status, err.value.code) == (503, "replica_unavailable") and len(client.requests) == 2
    assert door.in_flight == 0


def test_bad_input_and_a_full_serve_queue_are_not_retried():
    client = FakeClient([ApiError(400, "prompt is too long", param="prompt")])
    with pytest.raises(ApiError) as err:
        _open(_door(client))
    assert (err.value.status, err.value.param, len(client.requests)) == (400, "prompt", 1)

    class BackPressureError(RuntimeError):
        pass

    client = FakeClient(BackPressureError("full"))
    with pytest.raises(ApiError) as err:
        _open(_door(client))
    assert (err.value.status, err.value.code, len(client.requests)) == (503, "server_overloaded", 1)


def test_deadline_and_arrival_are_stamped_for_the_replica():
    req, before = _req(), time.time()
    _open(_door(FakeClient(GOOD)), req, timeout=5)
    assert before <= req.received <= time.time() and req.deadline == pytest.approx(req.received + 5)
    req = _req()
    _open(_door(FakeClient(GOOD)), req, timeout=1e9)  # a client may shorten the deadline, never extend it
    assert req.deadline == pytest.approx(req.received + 30)


def test_unknown_model_and_a_draining_front_door_refuse():
    door = _door(FakeClient(GOOD), retry_after_s=4)
    req = _req()
    req.model = "nope"
    with pytest.raises(ApiError) as err:
        _open(door, req)
    assert (err.value.status, err.value.param) == (404, "model")
    door.pusher.draining = True  # what the hub's answer sets
    with pytest.raises(ApiError) as err:
        _open(door)
    assert (err.value.status, err.value.code) == (503, "server_shutting_down") and "4 s" in err.value.message
