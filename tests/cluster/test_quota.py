"""The quota ledger, exactly, at given times (no cluster): buckets, reservations that keep concurrent requests within
one request of the quota, charges after the stream, lapsed holds, and a front door's client when the ledger fails."""

import asyncio

import pytest

from cluster.config import GrpcConfig
from cluster.errors import ApiError
from cluster.keys import QuotaSpec
from cluster.quota import Ledger, QuotaClient, QuotasConfig, TokenBucket, grpc_limits, key_limits


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bucket_takes_while_full_and_says_when_it_will_refill():
    bucket = TokenBucket(rate=2.0, burst=3.0, stamp=0.0)
    assert [bucket.take(1.0, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1.0, now=0.0) == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert bucket.take(1.0, now=0.5) == 0.0
    assert bucket.take(1.0, now=100.0) == 0.0 and bucket.level == pytest.approx(2.0)  # capped at the burst


def test_quotas_become_buckets():
    limits = key_limits(QuotaSpec(requests_per_min=60, tokens_per_min=600, tokens_per_day=86400))
    assert [(x.name, x.unit, x.rate, x.capacity) for x in limits] == [
        ("requests_per_min", "requests", 1.0, 60.0), ("tokens_per_min", "tokens", 10.0, 600.0),
        ("tokens_per_day", "tokens", 1.0, 86400.0)]
    assert [(x.name, x.rate, x.capacity) for x in grpc_limits(GrpcConfig(requests_per_s=0.5, request_burst=2,
                                                                         tokens_per_s=4))] == [
        ("grpc.requests_per_s", 0.5, 2.0), ("grpc.tokens_per_s", 4.0, 4.0)]


def test_requests_per_minute_refuse_with_the_time_until_allowed():
    clock = Clock()
    ledger = Ledger(clock=clock)
    limits = key_limits(QuotaSpec(requests_per_min=2))
    assert "hold" in ledger.admit("a", limits, 0) and "hold" in ledger.admit("a", limits, 0)
    refused = ledger.admit("a", limits, 0)
    assert refused["limit"] == "requests_per_min" and refused["retry_after_s"] == pytest.approx(30.0)
    assert "hold" in ledger.admit("b", limits, 0)  # every key has its own buckets
    clock.now = 30.0
    assert "hold" in ledger.admit("a", limits, 0)


def test_reservations_hold_concurrent_requests_within_one_request_of_the_quota():
    clock = Clock()
    ledger = Ledger(clock=clock)
    limits = key_limits(QuotaSpec(tokens_per_min=100))
    holds = []
    while True:  # requests of 30 tokens each arrive at once: admitted while reserved < the quota
        answer = ledger.admit("a", limits, 30)
        if "hold" not in answer:
            break
        holds.append(answer["hold"])
    assert len(holds) == 4 and 30 * len(holds) < 100 + 30  # the overshoot is less than one request
    assert answer["retry_after_s"] == pytest.approx(20 / (100 / 60) + 1e-3)  # 20 tokens over, refilled at 100/min
    for hold in holds:  # each used 10 tokens less than it reserved
        ledger.settle(hold, "a", limits, 20)
    assert ledger.reserved == {} and ledger.buckets[("a", "tokens_per_min")].level == pytest.approx(20.0)
    assert "hold" in ledger.admit("a", limits, 30)


def test_a_charge_can_put_a_key_into_debt_and_holds_lapse():
    clock = Clock()
    ledger = Ledger(hold_ttl_s=10, clock=clock)
    limits = key_limits(QuotaSpec(tokens_per_min=60))
    hold = ledger.admit("a", limits, 10)["hold"]
    ledger.settle(hold, "a", limits, 90)  # the request used far more than it reserved: 30 in debt
    assert ledger.admit("a", limits, 10)["retry_after_s"] == pytest.approx(30.0 + 1e-3)
    clock.now = 31.0
    ledger.admit("a", limits, 10)  # a hold that is never settled (its front door died) ...
    assert ledger.admit("a", limits, 10)["limit"] == "tokens_per_min"
    clock.now = 41.5  # ... lapses after hold_ttl_s
    assert "hold" in ledger.admit("a", limits, 10)


def test_a_changed_quota_applies_to_the_existing_bucket():
    ledger = Ledger(clock=Clock())
    ledger.admit("a", key_limits(QuotaSpec(requests_per_min=100)), 0)
    lowered = key_limits(QuotaSpec(requests_per_min=1))  # the bucket now holds at most 1
    assert "hold" in ledger.admit("a", lowered, 0) and ledger.admit("a", lowered, 0)["limit"] == "requests_per_min"


class Failing:
    """A ledger handle whose calls fail (the deployment is gone)."""

    def __getattr__(self, name):
        class Method:
            def remote(self, *args):
                raise RuntimeError("ActorDiedError: the ledger is gone")
        return Method()


def _reserve(client, key="a", tokens=10):
    return asyncio.run(client.reserve(key, key_limits(QuotaSpec(tokens_per_min=100)), tokens))


def test_the_ledger_failing_follows_the_policy_and_is_counted():
    failures = []
    closed = QuotaClient(QuotasConfig(on_ledger_error="closed"), Failing(), failures.append)
    with pytest.raises(ApiError) as err:
        _reserve(closed)
    assert (err.value.status, err.value.code) == (503, "quota_ledger_unavailable")
    opened = QuotaClient(QuotasConfig(on_ledger_error="open"), Failing(), failures.append)
    assert _reserve(opened).unchecked
    assert failures == ["closed", "open"]


def test_a_refused_key_is_refused_locally_until_the_bucket_allows_it():
    clock = Clock()
    client = QuotaClient(QuotasConfig(), clock=clock)
    client.local.clock = clock
    held = _reserve(client)
    client.local.settle(held.hold, "a", held.limits, 160)  # 60 tokens in debt: 36 s at 100 per minute
    with pytest.raises(ApiError) as err:
        _reserve(client)
    assert (err.value.status, err.value.code) == (429, "rate_limit_exceeded") and "tokens_per_min" in err.value.message
    client.local = None  # from now on the ledger is not asked: the refusal is known
    clock.now = 1.0
    with pytest.raises(ApiError) as again:
        _reserve(client)
    assert err.value.retry_after == pytest.approx(36.001)
    assert again.value.retry_after == pytest.approx(err.value.retry_after - 1.0)
