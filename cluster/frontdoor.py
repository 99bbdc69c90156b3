"""The front door: what every protocol does with a request between parsing it and writing out the replica's items.

Flow: a protocol adapter (the HTTP ingress, the gRPC servicer) parses its request into a `GenerateRequest` and
knows the caller (cluster/auth.py: the key, the client, the route) -> `FrontDoor.open(req, timeout, caller)` =
`enter` then `start`. `enter`: the caller's identity stamped on the request (`req.caller`: the one place both
protocols put it), `received` and `deadline` stamped (unix times; the replica measures TTFT and queue time from
`received`, and aborts the engine request at `deadline`: the one deadline mechanism) -> refused while the cluster
drains (503; gRPC UNAVAILABLE) -> the model by name (404) -> the key's scopes (cluster/scopes.py: 403) -> the
safety layer (cluster/safety.py: the quota ledger's reservation, 429; the input filters, 400 content_filter) -> the
routing stamp (prefix hashes for the PrefixAffinityRouter, of the prompt as the filters left it) -> a `Ticket`.
`start`: the model's `ModelClient` streams from a replica; its first item decides: an `ApiError` (bad input, the
engine's queue full, past the deadline) or a `StreamHead`. A replica that fails before its first token, or whose
engine queue is full, is tried once more, the router ranking it last -> a `Call`: the adapter iterates the
replica's items (frames, body or deltas; an `ApiError` item is a mid-stream error) and always `close()`s it. On the
way the Call keeps the replica's closing `Tally` (usage, tool calls) and, when an output filter runs, checks each
window of the answer before releasing its items (a blocked window ends the answer with finish_reason
content_filter: cluster/output/window.py, cluster/guards/output.py). `close()` cancels an unfinished replica stream
(the engine request is aborted, its KV blocks freed), releases the in-flight slot and closes the ticket (the
ledger charged with the real tokens, one audit record, the per-key counters). Errors are `ApiError`s throughout;
`replica_failure` maps Serve's and Ray's exceptions onto them, and each protocol renders them (HTTP status and JSON
body; gRPC status in cluster/grpc/servicer.py). Metrics: a `MetricsPusher` pushes the adapter's and the safety
layer's snapshots and the in-flight count to the hub, whose answer carries the drain flag.
"""

import asyncio
import logging
import secrets
import time
from typing import Protocol

from collections import deque

from cluster.auth import INTERNAL, ApiKeys, Caller
from cluster.config import AppConfig
from cluster.errors import ApiError, draining, not_found_model, overloaded, timed_out
from cluster.hub import MetricsPusher
from cluster.keys import ANONYMOUS
from cluster.metrics import labelled
from cluster.output.deltas import SampleDelta, StreamHead
from cluster.output.openai import Usage
from cluster.output.window import CONTENT_FILTER, Tally, Window
from cluster.protocol import GenerateRequest, prefix_hashes, routing_text
from cluster.safety import Safety, Ticket, route_of
from cluster.scopes import bound, permit

log = logging.getLogger(__name__)
BACKSTOP_S = 5.0  # past the deadline by this much with no word from the replica: it is not enforcing it (gone, stuck)
_GONE = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "EngineDeadError"}  # replica cannot serve
CLIENT_GONE = 499  # the status a request has in the audit log and metrics when its client left first
NOBODY = Caller(ANONYMOUS)  # the caller of a front door without keys


class ModelClient(Protocol):
    """How a front door reaches one model's replicas (a Ray Serve handle in the cluster, an in-process LLMServer in
    unit tests)."""

    def stream(self, req: GenerateRequest):  # -> async iterator: StreamHead or ApiError, then the formatter's items
        ...

    async def health(self) -> bool: ...

    async def tokenize(self, req: GenerateRequest) -> dict | ApiError: ...


class Call:
    """One admitted generation: its replica stream after the head. Iterate it; always `close()` it."""

    def __init__(self, door: "FrontDoor", req: GenerateRequest, stream, head: StreamHead, ticket: Ticket):
        self.door, self.req, self.stream, self.head, self.ticket = door, req, stream, head, ticket
        self.finished = False  # the replica's stream ended on its own
        self.filtered = False  # an output filter ended the answer (content_filter)
        self.tally: Tally | None = None  # the replica's closing tally (usage, tool calls)
        self.error: ApiError | None = None  # the mid-stream error the call ended with
        self.seen = Usage(head.prompt_tokens)  # what passed, for a stream cut short before its tally
        self._ready: deque = deque()  # items to hand out (a window's, once its filters passed it)
        self._closed = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._ready:
            if self.finished or self.filtered:
                raise StopAsyncIteration
            await self._pull()
        return self._ready.popleft()

    async def _pull(self) -> None:
        try:
            item = await _within(anext(self.stream), self.req)
        except StopAsyncIteration:
            self.finished = True
            return
        except ApiError as err:
            self.error = err
            raise
        except Exception as err:  # noqa: BLE001 - the replica died mid-stream: say so, never a bare 500
            self.error = replica_failure(err)
            raise self.error from None
        if isinstance(item, Tally):
            self.tally = item
        elif isinstance(item, Window):
            await self._window(item)
        else:
            self._count(item)
            self.error = item if isinstance(item, ApiError) else self.error
            self._ready.append(item)

    async def _window(self, window: Window) -> None:
        self.seen = window.usage or self.seen
        guard = self.ticket.output
        if guard is None or await guard.passes(window):
            self._ready.extend(window.items)
            return
        self.filtered = True  # the answer ends before this window
        self._ready.extend(window.cut)
        await cancel(self.stream)

    def _count(self, item) -> None:
        """Tokens of an item, for a stream cut short before its tally (a frame: about one token per sample)."""
        if isinstance(item, SampleDelta):
            self.seen.completion_tokens += len(item.token_ids)
        elif isinstance(item, str) and item.startswith(("data: {", "event: response.output_text.delta")):
            self.seen.completion_tokens += 1

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
        if not (self.finished or self.filtered):
            await cancel(self.stream)
        usage = self.tally.usage if self.tally is not None else self.seen
        self.ticket.close(usage, self.tally, *self._outcome())

    def _outcome(self) -> tuple:
        if self.filtered:
            return 200, CONTENT_FILTER, None
        if self.error is not None:
            return self.error.status, "error", self.error
        return (200, "completed", None) if self.finished else (CLIENT_GONE, "cancelled", None)


class FrontDoor:
    def __init__(self, config: AppConfig, models: dict[str, ModelClient], hub=None, source: str = "frontdoor",
                 snapshot=list, ledger=None):
        """`ledger`: the QuotaLedger deployment's handle (None: an in-process ledger, this front door's alone)."""
        self.config, self.models = config, models
        self.in_flight = 0  # admitted generation requests not yet closed
        self.started = int(time.time())
        self.keys = ApiKeys(config.auth, set(config.guards.filters))  # both protocols' key check
        self.safety = Safety(config, source.replace("/", "-"), ledger, self.classify,
                             lambda: self.keys.ring.reload_errors)
        self.pusher = MetricsPusher(hub, source, lambda: labelled(snapshot() + self.safety.metrics.snapshot(),
                                                                  frontdoor=source.replace("/", "-")),
                                    config.metrics_push_interval_s, door=self._door_state)
        self._key_watch: asyncio.Task | None = None

    def wake(self) -> None:
        """Start the background work (idempotent; needs a running loop): metrics pushes, and re-reading the key
        files every auth.reload_interval_s, so a rotation reaches every front door whether it has traffic or not."""
        self.pusher.start()
        if self._key_watch is None:
            self._key_watch = asyncio.get_running_loop().create_task(self._watch_keys())

    async def _watch_keys(self) -> None:
        while True:
            await asyncio.sleep(self.config.auth.reload_interval_s)
            try:
                self.keys.ring.refresh()
            except Exception as err:  # noqa: BLE001 - the old keys stay; never take the front door down
                log.error("re-reading the API keys failed: %r", err)

    @property
    def draining(self) -> bool:
        return self.pusher.draining

    def _door_state(self) -> dict:
        return {"in_flight": self.in_flight, "draining": self.draining}

    # ---- admission ----
    def admit(self, req: GenerateRequest, timeout: float | None = None, caller: Caller = NOBODY,
              limit: float | None = None, route: str | None = None) -> ModelClient:
        """Checks that need no replica (drain, model, the key's scopes for `route`, by default the request's kind);
        stamps the caller, arrival and deadline on `req` (the deadline: `timeout`, never past `limit`, by default
        limits.request_timeout_s); returns the model's client."""
        self.wake()
        req.caller = caller.identity
        req.received = time.time()
        limit = self.config.limits.request_timeout_s if limit is None else limit
        req.deadline = req.received + (limit if timeout is None else min(timeout, limit))
        if self.draining:
            raise draining(self.config.limits.retry_after_s)
        spec = self.config.model(req.model)
        if spec is None or req.model not in self.models:
            raise not_found_model(req.model, [m.name for m in self.config.models])
        permit(caller.key, route or route_of(req))
        if route is None:
            bound(caller.key, req, spec.default_reasoning_effort)
        return self.models[req.model]

    def permit(self, caller: Caller, route: str) -> None:
        """The key's scopes allow `route` (models, responses reads): else 403."""
        permit(caller.key, route)

    def _route(self, req: GenerateRequest) -> None:
        """The routing stamp, of the prompt the replica will see (after the input filters)."""
        spec = self.config.model(req.model)
        if spec.routing.prefix_affinity:
            req.prefix_hashes = prefix_hashes(routing_text(req), spec.routing.prefix_chunk_chars)

    async def enter(self, req: GenerateRequest, timeout: float | None = None, caller: Caller = NOBODY,
                    limit: float | None = None) -> Ticket:
        """Admit `req` for `caller`: checks, quota, input filters, stamps; raises ApiError (recorded)."""
        route = route_of(req)
        try:
            client = self.admit(req, timeout, caller, limit)
            ticket = await self.safety.enter(req, caller, route)
        except ApiError as err:
            self.safety.refused(req, caller, route, err)
            raise
        ticket.client = client
        self._route(req)
        return ticket

    async def start(self, ticket: Ticket) -> Call:
        """Start an entered request on a replica (one retry elsewhere before its first token); raises ApiError."""
        req = ticket.req
        self.in_flight += 1
        try:
            stream, head = await self._start(ticket.client, req)
        except BaseException as err:
            self.in_flight -= 1
            self.abandon(ticket, err)
            raise
        return Call(self, req, stream, head, ticket)

    def abandon(self, ticket: Ticket, err: BaseException | None = None) -> None:
        """An entered request that never got (or never will get) its stream: released and recorded."""
        if isinstance(err, ApiError):
            ticket.close(None, None, err.status, "error", err)
        else:
            ticket.close(None, None, CLIENT_GONE, "cancelled")

    async def open(self, req: GenerateRequest, timeout: float | None = None, caller: Caller = NOBODY,
                   limit: float | None = None) -> Call:
        """`enter` then `start`: admit `req` for `caller` and start it on a replica; raises ApiError."""
        return await self.start(await self.enter(req, timeout, caller, limit))

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
    async def tokenize(self, req: GenerateRequest, caller: Caller = NOBODY) -> dict:
        """{"token_ids", "max_model_len"} of the prompt `req` would run; raises ApiError."""
        try:
            client = self.admit(req, caller=caller, route="tokenize")
            ticket = await self.safety.enter(req, caller, "tokenize", generation=False)
        except ApiError as err:
            self.safety.refused(req, caller, "tokenize", err)
            raise
        try:
            result = await client.tokenize(req)
        except Exception as err:  # noqa: BLE001
            result = replica_failure(err)
        if isinstance(result, ApiError):
            ticket.close(None, None, result.status, "error", result)
            raise result
        ticket.close(None, None, 200, "completed")  # a request against the quota; no tokens were generated
        return result

    async def classify(self, model: str, messages: list[dict], max_tokens: int, reasoning_effort: str) -> str:
        """A guard's question to a served model (cluster/guards/policy.py): the final answer's text, greedy. The
        front door's own request: no key, quota or filter of its own, nothing in the audit log."""
        req = GenerateRequest("chat", model, "guard-" + secrets.token_hex(8), {"max_tokens": max_tokens,
                                                                               "temperature": 0.0},
                              messages=messages, reasoning_effort=reasoning_effort)
        client = self.admit(req, caller=INTERNAL, route="chat")
        self._route(req)
        stream, _ = await self._start(client, req)
        try:
            body = await _within(anext(stream), req)
        finally:
            await cancel(stream)
        if isinstance(body, ApiError):
            raise body
        return body["choices"][0]["message"]["content"] or ""

    async def close(self) -> None:
        """The front door stops: its last audit records are written."""
        if self._key_watch is not None:
            self._key_watch.cancel()
            self._key_watch = None
        await self.safety.close()

    def model_names(self) -> list[str]:
        return [m.name for m in self.config.models]

    async def health(self) -> dict[str, bool]:
        """model -> whether its replicas answer; every model False while draining (load balancers move away)."""
        self.wake()
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
