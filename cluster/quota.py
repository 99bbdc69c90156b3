"""Quotas: one ledger for the whole cluster, so a key's allowance does not grow with the number of front doors.

Flow: a front door admits a request (cluster/safety.py) -> `QuotaClient.reserve(key, limits, tokens)` -> the ledger
(`QuotaLedger`: one Serve deployment that every ingress and gateway replica on every node calls through its handle)
looks at each of the key's buckets: a request bucket must hold one request; a token bucket must not be in debt once
the tokens other requests of the key have reserved are counted -> refused: 429 / RESOURCE_EXHAUSTED with the time
until the bucket allows it (the front door then refuses that key locally until then, without asking again) ->
admitted: one request taken from each request bucket, the request's token estimate (prompt estimate + max_tokens)
reserved on each token bucket -> the stream ends -> `settle` drops the reservation and charges the real prompt and
generated tokens (the bucket may go into debt: the cost of a request is known once it has run) -> a front door that
stops never settles: its reservations lapse after `quotas.hold_ttl_s`. Buckets refill continuously (a quota of L
per minute: L/60 per second, holding at most L). The ledger unreachable (an error, or no answer in
`quotas.ledger_timeout_s`): `quotas.on_ledger_error` decides, open (admitted, nothing reserved, still charged when
the ledger answers again) or closed (503); each such failure counts in gptoss_quota_ledger_errors_total.

Why a Ray actor (a Serve deployment) and not the SQL store the Responses API uses: it is one place for every node
of the Ray cluster with nothing more to run (the SQLite store is one node's file; the global case would need
PostgreSQL for every deployment, `make serve` included); its decisions are serialized on one event loop (no row
locks, no transaction per admission and per settle); an admission is one actor call (~1 ms) rather than a database
round trip with a commit. The price: the buckets live in the actor's memory, so a restart of the ledger (a crash or
a redeploy) refills every bucket once.
"""

import asyncio
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

from cluster.sections import Section, doc

log = logging.getLogger(__name__)


class QuotasConfig(Section):
    """Where quotas are kept and what happens when that place cannot be reached."""

    on_ledger_error: Literal["open", "closed"] = doc(
        "closed", "the ledger failed or did not answer: open (admit; the tokens are charged when it answers again) "
                  "or closed (503 quota_ledger_unavailable); counted in gptoss_quota_ledger_errors_total")
    ledger_timeout_s: float = doc(2.0, "seconds a front door waits for the ledger's answer", gt=0)
    hold_ttl_s: float = doc(3600.0, "a reservation not settled this long after it was made (its front door "
                                    "stopped) is dropped", gt=0)


@dataclass(frozen=True)
class Limit:
    """One bucket of a key: `capacity` units, refilled at `rate` per second."""

    name: str  # "requests_per_min", "tokens_per_min", "tokens_per_day", "grpc.requests_per_s", "grpc.tokens_per_s"
    unit: Literal["requests", "tokens"]
    rate: float  # units per second
    capacity: float  # most units the bucket holds (the burst)
    value: float  # the configured number, for messages (e.g. 600 for tokens_per_min: 600)


def key_limits(quotas) -> list[Limit]:
    """A named key's QuotaSpec (cluster/keys.py) as buckets."""
    out = []
    for name, unit, span in (("requests_per_min", "requests", 60.0), ("tokens_per_min", "tokens", 60.0),
                             ("tokens_per_day", "tokens", 86400.0)):
        value = getattr(quotas, name)
        if value:
            out.append(Limit(name, unit, value / span, float(value), float(value)))
    return out


def grpc_limits(grpc) -> list[Limit]:
    """The gateway's per-key rates (GrpcConfig: requests_per_s, tokens_per_s and their bursts) as buckets."""
    out = []
    if grpc.requests_per_s > 0:
        out.append(Limit("grpc.requests_per_s", "requests", grpc.requests_per_s,
                         float(grpc.request_burst or max(1.0, grpc.requests_per_s)), grpc.requests_per_s))
    if grpc.tokens_per_s > 0:
        out.append(Limit("grpc.tokens_per_s", "tokens", grpc.tokens_per_s,
                         float(grpc.token_burst or max(1.0, grpc.tokens_per_s)), grpc.tokens_per_s))
    return out


@dataclass
class TokenBucket:
    """`rate` units per second up to `burst`; `take` succeeds only while the bucket holds the amount, `charge` may
    take it below 0 (debt)."""

    rate: float
    burst: float
    level: float = field(default=-1.0)  # starts full
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        if self.level < 0:
            self.level = self.burst

    def refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float = 1.0, now: float | None = None) -> float:
        """Takes `amount` if the bucket holds it: returns 0.0; else returns the seconds until it will."""
        self.refill(time.monotonic() if now is None else now)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def charge(self, amount: float, now: float | None = None) -> None:
        self.refill(time.monotonic() if now is None else now)
        self.level -= amount


@dataclass
class Hold:
    """Tokens reserved for a request in flight."""

    key: str
    limits: tuple[str, ...]  # the token buckets it reserved on
    tokens: float
    expires: float  # ledger clock


class Ledger:
    """Every key's buckets and reservations (one instance: the QuotaLedger deployment, or in-process)."""

    def __init__(self, hold_ttl_s: float = 3600.0, clock=time.monotonic):
        self.clock, self.hold_ttl_s = clock, hold_ttl_s
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.reserved: dict[tuple[str, str], float] = {}  # bucket -> tokens its holds reserve
        self.holds: dict[str, Hold] = {}
        self._ids = itertools.count(1)

    def admit(self, key: str, limits: list[Limit], tokens: float) -> dict:
        """{"hold": id} (admitted), or {"limit": name, "value": v, "retry_after_s": s} (refused)."""
        now = self.clock()
        self._expire(now)
        waits = [(self._wait(key, limit, now), limit) for limit in limits]
        worst, limit = max(waits, key=lambda w: w[0], default=(0.0, None))
        if worst > 0:
            return {"limit": limit.name, "value": limit.value, "retry_after_s": worst}
        for limit in limits:
            if limit.unit == "requests":
                self.buckets[(key, limit.name)].level -= 1.0
        token_limits = tuple(limit.name for limit in limits if limit.unit == "tokens")
        if not token_limits:
            return {"hold": None}
        hold = f"h{next(self._ids)}"
        self.holds[hold] = Hold(key, token_limits, float(tokens), now + self.hold_ttl_s)
        for name in token_limits:
            self.reserved[(key, name)] = self.reserved.get((key, name), 0.0) + tokens
        return {"hold": hold}

    def _wait(self, key: str, limit: Limit, now: float) -> float:
        """Seconds until `limit` admits a request of `key` (0: now)."""
        bucket = self._bucket(key, limit, now)
        if limit.unit == "requests":
            return 0.0 if bucket.level >= 1.0 else (1.0 - bucket.level) / bucket.rate
        owed = self.reserved.get((key, limit.name), 0.0) - bucket.level
        return 0.0 if owed < 0 else owed / bucket.rate + 1e-3

    def settle(self, hold: str | None, key: str, limits: list[Limit], tokens: float) -> None:
        """Drop `hold` (if it still stands) and charge `tokens` to `key`'s token buckets among `limits`."""
        now = self.clock()
        held = self.holds.pop(hold, None) if hold else None
        if held is not None:
            self._release(held)
        for limit in limits:
            if limit.unit == "tokens" and tokens:
                self._bucket(key, limit, now).charge(tokens, now)

    def _bucket(self, key: str, limit: Limit, now: float) -> TokenBucket:
        bucket = self.buckets.get((key, limit.name))
        if bucket is None:
            bucket = self.buckets[(key, limit.name)] = TokenBucket(limit.rate, limit.capacity, stamp=now)
        elif (bucket.rate, bucket.burst) != (limit.rate, limit.capacity):  # the key's quota changed (reloaded)
            bucket.refill(now)
            bucket.rate, bucket.burst = limit.rate, limit.capacity
            bucket.level = min(bucket.level, bucket.burst)
        bucket.refill(now)
        return bucket

    def _release(self, held: Hold) -> None:
        for name in held.limits:
            left = self.reserved.get((held.key, name), 0.0) - held.tokens
            if left > 1e-9:
                self.reserved[(held.key, name)] = left
            else:
                self.reserved.pop((held.key, name), None)

    def _expire(self, now: float) -> None:
        for hold_id in [h for h, held in self.holds.items() if held.expires <= now]:
            self._release(self.holds.pop(hold_id))

    def levels(self) -> list[tuple[str, str, float]]:
        """(key, limit name, available fraction 0..1: what a new request could use now) of every bucket."""
        now = self.clock()
        out = []
        for (key, name), bucket in sorted(self.buckets.items()):
            bucket.refill(now)
            free = bucket.level - self.reserved.get((key, name), 0.0)
            out.append((key, name, max(0.0, min(1.0, free / bucket.burst))))
        return out


class QuotaLedger:
    """The ledger as a deployment (cluster/app.py makes one replica): async methods, so its calls run one at a time
    on the replica's event loop; its bucket levels are pushed to the metrics hub as gptoss_key_quota_available."""

    def __init__(self, hold_ttl_s: float = 3600.0, hub=None, push_interval_s: float = 1.0):
        from cluster.hub import MetricsPusher  # noqa: PLC0415
        from cluster.metrics import quota_families  # noqa: PLC0415

        self.ledger = Ledger(hold_ttl_s)
        self.pusher = MetricsPusher(hub, "ledger/quota", lambda: quota_families(self.ledger.levels()),
                                    push_interval_s)

    async def admit(self, key: str, limits: list[Limit], tokens: float) -> dict:
        self.pusher.start()
        return self.ledger.admit(key, limits, tokens)

    async def settle(self, hold: str | None, key: str, limits: list[Limit], tokens: float) -> None:
        self.ledger.settle(hold, key, limits, tokens)

    async def check_health(self) -> None:
        self.pusher.start()

    async def __del__(self):
        await self.pusher.stop()


@dataclass
class Refusal:
    """Why the ledger said no, and until when (monotonic time of this process)."""

    limit: str
    value: float
    until: float


class QuotaClient:
    """A front door's side of the ledger: reserve before the replica, settle after the stream."""

    def __init__(self, config: QuotasConfig, ledger=None, on_error=None, clock=time.monotonic):
        """`on_error(policy)`: a ledger call failed or timed out and `policy` ("open" or "closed") applied."""
        self.config, self.clock = config, clock
        self.remote = ledger  # the QuotaLedger deployment's handle; None: an in-process ledger (tests, one gateway)
        self.local = Ledger(config.hold_ttl_s) if ledger is None else None
        self.on_error = on_error or (lambda policy: None)
        self._refused: dict[tuple[str, str], Refusal] = {}  # (key, limit) -> refused until
        self._tasks: set[asyncio.Task] = set()

    async def reserve(self, key: str, limits: list[Limit], tokens: float) -> "Reservation":
        """Admit one request of `key` and reserve `tokens`; raises ApiError (429, or 503 when the ledger fails
        closed). No limits: admitted without asking."""
        if not limits:
            return Reservation(key, [], None, admitted=True)
        self._refuse_known(key, limits)
        try:
            answer = await self._call("admit", key, limits, tokens)
        except Exception as err:  # noqa: BLE001 - unreachable, dead, timed out: the configured policy decides
            return self._failed(key, limits, err)
        if "hold" in answer:
            return Reservation(key, limits, answer["hold"], admitted=True)
        until = self.clock() + answer["retry_after_s"]
        self._refused[(key, answer["limit"])] = Refusal(answer["limit"], answer["value"], until)
        raise _over(key, answer["limit"], answer["value"], answer["retry_after_s"])

    def settle(self, reservation: "Reservation", tokens: int) -> None:
        """Charge the request's real tokens (in the background: the answer has gone out)."""
        if not reservation.limits:
            return
        task = asyncio.get_running_loop().create_task(self._settle(reservation, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, reservation: "Reservation", tokens: int) -> None:
        try:
            await self._call("settle", reservation.hold, reservation.key, reservation.limits, tokens)
        except Exception as err:  # noqa: BLE001 - the tokens go uncharged; counted, never fails a request
            self.on_error("open")
            log.warning("the quota ledger did not take %d tokens of key %s: %r", tokens, reservation.key, err)

    async def _call(self, method: str, *args):
        if self.remote is None:
            return getattr(self.local, method)(*args)
        response = getattr(self.remote, method).remote(*args)
        return await asyncio.wait_for(_awaitable(response), self.config.ledger_timeout_s)

    def _refuse_known(self, key: str, limits: list[Limit]) -> None:
        now = self.clock()
        for limit in limits:
            known = self._refused.get((key, limit.name))
            if known is not None and known.until > now:
                raise _over(key, known.limit, known.value, known.until - now)
            if known is not None:
                del self._refused[(key, limit.name)]

    def _failed(self, key: str, limits: list[Limit], err: Exception) -> "Reservation":
        from cluster.errors import ApiError  # noqa: PLC0415

        self.on_error(self.config.on_ledger_error)
        log.error("the quota ledger failed (%s policy): %r", self.config.on_ledger_error, err)
        if self.config.on_ledger_error == "open":
            return Reservation(key, limits, None, admitted=True, unchecked=True)
        raise ApiError(503, "The quota ledger cannot be reached, and this server refuses requests it cannot count "
                            "(quotas.on_ledger_error: closed); retry shortly.", "server_error", None,
                       "quota_ledger_unavailable", retry_after=1.0)


@dataclass
class Reservation:
    """What an admitted request holds in the ledger until it ends."""

    key: str
    limits: list[Limit]
    hold: str | None  # the ledger's hold id (None: no token limits, or admitted unchecked)
    admitted: bool = True
    unchecked: bool = False  # admitted because the ledger failed open


def _over(key: str, limit: str, value: float, retry_after_s: float):
    from cluster.errors import quota_exceeded  # noqa: PLC0415

    return quota_exceeded(key, limit, value, max(retry_after_s, 0.001))


async def _awaitable(response):
    return await response


def retry_seconds(seconds: float) -> int:
    """Retry-After header value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
