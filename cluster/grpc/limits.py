"""Admission limits of one gateway replica: a cap on the streams it serves at once.

Flow: a streaming call arrives -> `Limits.admit()` takes a stream slot or refuses with `Overloaded` (the time until a
retry may succeed: RESOURCE_EXHAUSTED + trailing metadata `retry-after-ms`) -> the slot is released when the call
ends however it ends. The per-key rates (grpc.requests_per_s, grpc.tokens_per_s) are not here: they are buckets in
the cluster's one quota ledger (cluster/quota.py), so they hold across every gateway replica.
"""

from cluster.config import GrpcConfig


class Overloaded(Exception):
    """Refused for load: the call may be retried after `retry_after_ms`."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Limits:
    """This gateway replica's stream slots (grpc.max_concurrent_streams)."""

    def __init__(self, config: GrpcConfig):
        self.config = config
        self.in_flight = 0

    def admit(self) -> None:
        """Raises Overloaded, or takes a slot; `release` must follow."""
        c = self.config
        if self.in_flight >= c.max_concurrent_streams:
            raise Overloaded(f"{self.in_flight} streams are in flight (grpc.max_concurrent_streams="
                             f"{c.max_concurrent_streams})", c.retry_after_ms)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
