"""The front door: what every protocol does with a request between parsing it and writing out the replica's items.

Flow: a protocol adapter (the HTTP ingress, the gRPC servicer) parses its request into a `GenerateRequest` and
knows the caller (cluster/auth.py) -> `FrontDoor.open(req, timeout, caller)`: the caller's identity stamped on the
request (`req.caller`: the one place both protocols put it) -> refused while the cluster drains (503; gRPC
UNAVAILABLE) -> the model by name (404) -> the routing stamp (prefix hashes for the PrefixAffinityRouter) -> `received` and `deadline` stamped on the
request (unix times; the replica measures TTFT and queue time from `received`, and aborts the engine request at
`deadline`: the one deadline mechanism) -> the model's `ModelClient` streams from a replica; its first item decides:
an `ApiError` (bad input, the engine's queue full, past the deadline) or a `StreamHead`. A replica that fails before
its first token, or whose engine queue is full, is tried once more, the router ranking it last -> a `Call`: the
adapter iterates the replica's items (frames, body or deltas; an `ApiError` item is a mid-stream error) and always
`close()`s it, which cancels an unfinished replica stream (the engine request is aborted, its KV blocks freed) and
releases the in-flight slot. Errors are `ApiError`s throughout; `replica_failure` maps Serve's and Ray's exceptions
onto them, and each protocol renders them (HTTP status and JSON body; gRPC status in cluster/grpc/servicer.py).
Metrics: a `MetricsPusher` pushes the adapter's snapshot and the in-flight count to the hub, whose answer carries
the drain flag.
"""

import asyncio
import logging
import time
from typing import Protocol

from cluster.auth import ANONYMOUS
from cluster.config import AppConfig
from cluster.errors import ApiError, draining, not_found_model, overloaded, timed_out
from cluster.hub import MetricsPusher
from cluster.output.deltas import StreamHead
from cluster.protocol import GenerateRequest, prefix_hashes, routing_text

log = logging.getLogger(__name__)
BACKSTOP_S = 5.0  # past the deadline by this much with no word from the replica: it is not enforcing it (gone, stuck)
_GONE = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "EngineDeadError"}  # replica cannot serve


class ModelClient(Protocol):
    """How a front door reaches one model's replicas (a Ray Serve handle in the cluster, an in-process LLMServer in
    unit tests)."""

    def stream(self, req: GenerateRequest):  # -> async iterator: StreamHead or ApiError, then the formatter's items
        ...

    async def health(self) -> bool: ...

    async def tokenize(self, req: GenerateRequest) -> dict | ApiError: ...


class Call:
    """One admitted generation: its replica stream after the head. Iterate it; always `close()` it."""

    def __init__(self, door: "FrontDoor", req: GenerateRequest, stream, head: StreamHead):
        self.door, self.req, self.stream, self.head = door, req, stream, head
        self.finished = False  # the replica's stream ended on its own
        self._closed = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await _within(anext(self.stream), self.req)
        except StopAsyncIteration:
            self.finished = True
            raise
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - the replica died mid-stream: say so, never a bare 500
            raise replica_failure(err) from None

    async def next_item(self):
        """The next item; an `ApiError` item is raised."""
        item = await anext(self)
        if isinstance(item, ApiError):
            raise item
        return item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.door.in_flight -= 1
        if not self.finished:
            await cancel(self.stream)


class FrontDoor:
    def __init__(self, config: AppConfig, models: dict[str, ModelClient], hub=None, source: str = "frontdoor",
                 snapshot=list):
        self.config, self.models = config, models
        self.in_flight = 0  # admitted generation requests not yet closed
        self.started = int(time.time())
        self.pusher = MetricsPusher(hub, source, snapshot, config.metrics_push_interval_s, door=self._door_state)

    @property
    def draining(self) -> bool:
        return self.pusher.draining

    def _door_state(self) -> dict:
        return {"in_flight": self.in_flight, "draining": self.draining}

    # ---- admission ----
    def admit(self, req: GenerateRequest, timeout: float | None = None, caller: str = ANONYMOUS,
              limit: float | None = None) -> ModelClient:
        """Checks that need no replica; stamps the caller, routing, arrival and deadline on `req` (the deadline:
        `timeout`, never past `limit`, by default limits.request_timeout_s); returns the model's client."""
        self.pusher.start()
        req.caller = caller
        if self.draining:
            raise draining(self.config.limits.retry_after_s)
        spec = self.config.model(req.model)
        if spec is None or req.model not in self.models:
            raise not_found_model(req.model, [m.name for m in self.config.models])
        if spec.routing.prefix_affinity:
            req.prefix_hashes = prefix_hashes(routing_text(req), spec.routing.prefix_chunk_chars)
        limit = self.config.limits.request_timeout_s if limit is None else limit
        req.received = time.time()
        req.deadline = req.received + (limit if timeout is None else min(timeout, limit))
        return self.models[req.model]

    async def open(self, req: GenerateRequest, timeout: float | None = None, caller: str = ANONYMOUS,
                   limit: float | None = None) -> Call:
        """Admit `req` for `caller` (the identity cluster.auth made) and start it on a replica (one retry elsewhere
        before its first token); raises ApiError."""
        client = self.admit(req, timeout, caller, limit)
        self.in_flight += 1
        try:
            stream, head = await self._start(client, req)
        except BaseException:
            self.in_flight -= 1
            raise
        return Call(self, req, stream, head)

    async def _start(self, client: ModelClient, req: GenerateRequest):
        for attempt in (0, 1):
            stream = client.stream(req)
            try:
                head = await _within(anext(stream), req)
            except StopAsyncIteration:
                raise ApiError(500, "the replica ended the stream before its first token", "server_error") from None
            except (asyncio.CancelledError, GeneratorExit, ApiError):
                await cancel(stream)
                raise
            except Exception as err:  # noqa: BLE001 - replica unreachable, died, or its engine is dead
                await cancel(stream)
                failure = replica_failure(err)
                if attempt == 0 and failure.code != "server_overloaded":
                    log.warning("request %s failed before its first token (%r); retrying once", req.request_id, err)
                    _prepare_retry(req)
                    continue
                raise failure from None
            if isinstance(head, StreamHead):
                return stream, head
            await cancel(stream)
            if isinstance(head, ApiError) and head.status == 429 and attempt == 0:  # that replica's queue is full
                _prepare_retry(req)
                continue
            raise head if isinstance(head, ApiError) else ApiError(500, "unexpected first item", "server_error")
        raise AssertionError("unreachable")

    # ---- the rest of the API ----
    async def tokenize(self, req: GenerateRequest, caller: str = ANONYMOUS) -> dict:
        """{"token_ids", "max_model_len"} of the prompt `req` would run; raises ApiError."""
        client = self.admit(req, caller=caller)
        try:
            result = await client.tokenize(req)
        except Exception as err:  # noqa: BLE001
            raise replica_failure(err) from None
        if isinstance(result, ApiError):
            raise result
        return result

    def model_names(self) -> list[str]:
        return [m.name for m in self.config.models]

    async def health(self) -> dict[str, bool]:
        """model -> whether its replicas answer; every model False while draining (load balancers move away)."""
        self.pusher.start()
        results = await asyncio.gather(*(_healthy(client) for client in self.models.values()))
        return {name: ok and not self.draining for name, ok in zip(self.models, results)}


def replica_failure(err: BaseException) -> ApiError:
    """A replica stream's exception as an ApiError: Serve's queue full (503 server_overloaded), the replica gone
    (503 replica_unavailable), anything else (500, logged)."""
    names = {c.__name__ for c in type(err).__mro__} | {type(getattr(err, "cause", None)).__name__}
    if "BackPressureError" in names:  # ray.serve.exceptions; matched by name so tests need no Ray
        return overloaded(503, "the model's request queue is full")
    if names & _GONE or any(name in str(err) for name in _GONE):
        return ApiError(503, f"The replica serving this request failed ({type(err).__name__}); retry.",
                        "server_error", None, "replica_unavailable")
    log.error("replica stream failed: %r", err)
    return ApiError(500, f"Internal server error ({type(err).__name__}).", "server_error")


def _prepare_retry(req: GenerateRequest) -> None:
    """The retry goes elsewhere (the router ranks the failed replica last) under a fresh engine request id."""
    if req.routed_replica:
        req.avoid_replicas = [*req.avoid_replicas, req.routed_replica]
    req.routed_replica = None
    req.request_id = req.request_id.split("~")[0] + "~retry"


async def _within(awaitable, req: GenerateRequest):
    """`awaitable`, unless the replica stays silent BACKSTOP_S past the request's deadline (408). (asyncio.timeout
    arms a timer on the running task; wait_for would start a task per item, which costs more than the item.)"""
    try:
        async with asyncio.timeout(max(0.0, req.deadline - time.time()) + BACKSTOP_S):
            return await awaitable
    except TimeoutError:
        raise timed_out(round(req.deadline - req.received, 3)) from None


async def cancel(stream) -> None:
    """Stop a replica stream: cancelling a Serve response generator cancels the replica's generator, which aborts
    the engine request; an in-process async generator is closed."""
    stop = getattr(stream, "cancel", None)
    if stop is not None:
        stop()
    else:
        await stream.aclose()


async def _healthy(client: ModelClient) -> bool:
    try:
        return bool(await asyncio.wait_for(client.health(), 10))
    except Exception:  # noqa: BLE001 - any failure to answer is unhealthy
        return False
