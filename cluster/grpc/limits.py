"""Admission limits of the gateway: per-key token buckets (calls/s, tokens/s) and a cap on streams in flight.

Flow: a call arrives -> `Limits.admit(caller)` takes a stream slot and one request token from the caller's
bucket, and checks that the caller's token bucket is not in debt -> refused: `Overloaded` with the time until a
retry can succeed (RESOURCE_EXHAUSTED + trailing metadata `retry-after-ms`) -> admitted: the stream charges its
prompt and generated tokens to the caller's token bucket as they stream (it may go into debt: the cost of a call
is known only once it has run), and the slot is released when the call ends however it ends.
"""

import time
from dataclasses import dataclass, field

from cluster.config import GrpcConfig


class Overloaded(Exception):
    """Refused for load: the call may be retried after `retry_after_ms`."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


@dataclass
class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` may only succeed while not in debt, `charge` may go below 0."""

    rate: float
    burst: float
    level: float = field(default=-1.0)  # starts full
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        if self.level < 0:
            self.level = self.burst

    def _refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float = 1.0, now: float | None = None) -> float:
        """Takes `amount` if the bucket holds it: returns 0.0; else returns the seconds until it will."""
        self._refill(time.monotonic() if now is None else now)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def charge(self, amount: float, now: float | None = None) -> None:
        self._refill(time.monotonic() if now is None else now)
        self.level -= amount


class Limits:
    """Per-gateway-replica limits from `GrpcConfig` (each replica enforces its own share)."""

    def __init__(self, config: GrpcConfig):
        self.config = config
        self.in_flight = 0
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def admit(self, caller: str, stream: bool = True) -> None:
        """Raises Overloaded, or takes a slot (streams) and a request token; `release` must follow for streams."""
        c = self.config
        if stream and self.in_flight >= c.max_concurrent_streams:
            raise Overloaded(f"{self.in_flight} streams are in flight (grpc.max_concurrent_streams="
                             f"{c.max_concurrent_streams})", c.retry_after_ms)
        if c.tokens_per_s > 0:
            wait = self._bucket(self._tokens, caller, c.tokens_per_s, c.token_burst).take(0.0)
            if wait > 0:
                raise Overloaded(f"this API key is over its token rate (grpc.tokens_per_s={c.tokens_per_s:g})",
                                 _ms(wait))
        if c.requests_per_s > 0:
            wait = self._bucket(self._requests, caller, c.requests_per_s, c.request_burst).take(1.0)
            if wait > 0:
                raise Overloaded(f"this API key is over its request rate (grpc.requests_per_s={c.requests_per_s:g})",
                                 _ms(wait))
        if stream:
            self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def charge_tokens(self, caller: str, count: int) -> None:
        c = self.config
        if c.tokens_per_s > 0 and count:
            self._bucket(self._tokens, caller, c.tokens_per_s, c.token_burst).charge(count)

    @staticmethod
    def _bucket(buckets: dict, caller: str, rate: float, burst: int) -> TokenBucket:
        bucket = buckets.get(caller)
        if bucket is None:
            bucket = buckets[caller] = TokenBucket(rate, float(burst or max(1.0, rate)))
        return bucket


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000 + 0.999))
