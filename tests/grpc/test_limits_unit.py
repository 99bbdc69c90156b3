"""Token buckets and admission, exactly, at given times (no cluster)."""

import pytest

from cluster.config import GrpcConfig
from cluster.grpc.limits import Limits, Overloaded, TokenBucket


def test_bucket_takes_while_full_and_says_when_it_will_refill():
    bucket = TokenBucket(rate=2.0, burst=3.0, stamp=0.0)
    assert [bucket.take(1.0, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1.0, now=0.0) == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert bucket.take(1.0, now=0.5) == 0.0
    assert bucket.take(1.0, now=100.0) == 0.0 and bucket.level == pytest.approx(2.0)  # capped at the burst


def test_token_debt_blocks_until_repaid():
    bucket = TokenBucket(rate=10.0, burst=10.0, stamp=0.0)
    bucket.charge(35, now=0.0)  # a call used more than the bucket held: 25 in debt
    assert bucket.take(0.0, now=0.0) == pytest.approx(2.5)
    assert bucket.take(0.0, now=2.4) > 0 and bucket.take(0.0, now=2.5) == 0.0


def test_stream_slots_and_per_key_buckets():
    limits = Limits(GrpcConfig(max_concurrent_streams=2, requests_per_s=1.0, request_burst=2, retry_after_ms=900))
    limits.admit("a")
    limits.admit("b")
    with pytest.raises(Overloaded) as err:
        limits.admit("c")
    assert err.value.retry_after_ms == 900
    limits.release()
    limits.admit("a")  # the slot came back; "a" has used its burst of 2
    limits.release()
    with pytest.raises(Overloaded) as err:
        limits.admit("a")
    assert 0 < err.value.retry_after_ms <= 1000
    limits.admit("b", stream=False)  # unary calls take no slot, only a request token
