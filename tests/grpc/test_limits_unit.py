"""A gateway replica's stream slots, exactly (no cluster). The per-key rates are the quota ledger's
(tests/cluster/test_quota.py)."""

import pytest

from cluster.config import GrpcConfig
from cluster.grpc.limits import Limits, Overloaded


def test_stream_slots():
    limits = Limits(GrpcConfig(max_concurrent_streams=2, retry_after_ms=900))
    limits.admit()
    limits.admit()
    with pytest.raises(Overloaded) as err:
        limits.admit()
    assert err.value.retry_after_ms == 900 and "max_concurrent_streams=2" in str(err.value)
    limits.release()
    limits.admit()  # the slot came back
    assert limits.in_flight == 2
