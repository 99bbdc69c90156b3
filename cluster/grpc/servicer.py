"""The gptoss.v1.Inference servicer: one call -> limits -> validated request -> a replica's stream -> messages.

Flow of a streaming call (Generate, Chat): the key was checked by `AuthInterceptor` -> `Limits.admit` (stream slot,
per-key rates; refused: RESOURCE_EXHAUSTED + `retry-after-ms`) -> `convert.to_*` (INVALID_ARGUMENT naming the
field) -> the model by name (NOT_FOUND) -> prefix hashes for the router, the call's deadline (capped by
limits.request_timeout_s) stamped on the request for the engine -> `_start`: the model's `ModelClient` streams from
a replica chosen by the deployment's PrefixAffinityRouter; a failure before the first token (replica died, engine
dead or its queue full) is retried once, ranking the failed replica last -> initial metadata `x-gptoss-replica`
-> every delta becomes a message; tokens are charged to the caller's token bucket -> the call ends: done, or
cancelled / past its deadline (grpc cancels this coroutine; `finally` cancels the replica stream, which aborts
the engine request and frees its KV blocks), or the replica died mid-stream (UNAVAILABLE).
"""

import asyncio
import logging
import time

import grpc

from cluster.config import AppConfig
from cluster.errors import ApiError
from cluster.grpc import convert
from cluster.grpc.auth import ApiKeys
from cluster.grpc.limits import Limits, Overloaded
from cluster.grpc.stream import SampleDelta, StreamEnd, StreamHead
from cluster.protocol import GenerateRequest, prefix_hashes, routing_text

log = logging.getLogger(__name__)
REPLICA_HEADER = "x-gptoss-replica"
RETRY_HEADER = "retry-after-ms"
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.RESOURCE_EXHAUSTED}
_GONE = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "EngineDeadError"}  # replica cannot serve


class Refusal(Exception):
    """Ends the call with `code`; `retry_after_ms` adds the retry hint to the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after_ms = code, message, retry_after_ms

    @classmethod
    def of(cls, err: ApiError, retry_after_ms: int) -> "Refusal":
        code = _CODES.get(err.status, grpc.StatusCode.INTERNAL)
        retry = retry_after_ms if code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
        return cls(code, convert.error_text(err), retry)

    async def abort(self, context) -> None:
        trailing = ((RETRY_HEADER, str(self.retry_after_ms)),) if self.retry_after_ms is not None else ()
        await context.abort(self.code, self.message, trailing)


def _failure(err: BaseException, retry_after_ms: int) -> Refusal:
    """A replica stream's exception as the call's status."""
    names = {c.__name__ for c in type(err).__mro__} | {type(getattr(err, "cause", None)).__name__}
    if "BackPressureError" in names:  # Serve's max_queued_requests: every replica is full
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "the model's request queue is full", retry_after_ms)
    if names & _GONE or any(name in str(err) for name in _GONE):
        return Refusal(grpc.StatusCode.UNAVAILABLE, f"the replica serving this call failed: {type(err).__name__}")
    log.error("replica stream failed: %r", err)
    return Refusal(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}")


def _retryable(err: BaseException) -> bool:
    return "BackPressureError" not in {c.__name__ for c in type(err).__mro__}


async def _cancel(stream) -> None:
    cancel = getattr(stream, "cancel", None)
    if cancel is not None:  # a Ray Serve response generator: cancels the replica's generator (engine abort)
        cancel()
    else:
        await stream.aclose()


class InferenceServicer:
    """Implements gptoss.v1.Inference over `models`: model name -> ModelClient (cluster.ingress.ModelClient, plus
    `tokenize(req)`)."""

    def __init__(self, config: AppConfig, models: dict, pb, keys: ApiKeys, limits: Limits):
        self.config, self.models, self.pb = config, models, pb
        self.keys, self.limits = keys, limits
        self.started = int(time.time())

    # ---- RPCs ----
    async def Generate(self, request, context):
        async for message in self._guarded(context, self._stream(request, context, convert.to_generate,
                                                                  convert.GenerateOutput)):
            yield message

    async def Chat(self, request, context):
        async for message in self._guarded(context, self._stream(request, context, convert.to_chat,
                                                                  convert.ChatOutput)):
            yield message

    async def Tokenize(self, request, context):
        try:
            ids, max_len = await self._tokenize(request, context)
        except Refusal as refusal:
            await refusal.abort(context)
        return self.pb.TokenizeResponse(token_ids=ids, count=len(ids), max_model_len=max_len)

    async def CountTokens(self, request, context):
        try:
            ids, max_len = await self._tokenize(request, context)
        except Refusal as refusal:
            await refusal.abort(context)
        return self.pb.CountTokensResponse(count=len(ids), max_model_len=max_len)

    async def ListModels(self, request, context):
        return self.pb.ListModelsResponse(models=[self.pb.Model(name=m.name, created=self.started,
                                                                owned_by="gptoss-serve") for m in self.config.models])

    # ---- streaming ----
    async def _guarded(self, context, messages):
        """Yields `messages`; a Refusal raised while making them ends the call with its status."""
        try:
            async for message in messages:
                yield message
        except Refusal as refusal:
            await refusal.abort(context)

    async def _stream(self, request, context, to_request, output_cls):
        caller = self._admit(context, stream=True)
        try:
            req = self._request(request, context, to_request)
            stream, head = await self._start(req)
            finished = False
            try:
                await context.send_initial_metadata(((REPLICA_HEADER, head.replica),))
                self.limits.charge_tokens(caller, head.prompt_tokens)
                output = output_cls(self.pb, req)
                async for item in stream:
                    if isinstance(item, ApiError):  # past its deadline in the engine
                        raise Refusal.of(item, self.config.grpc.retry_after_ms)
                    if isinstance(item, SampleDelta):
                        self.limits.charge_tokens(caller, len(item.token_ids))
                    yield output.message(item)
                    finished = isinstance(item, StreamEnd)
            except (Refusal, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as err:  # noqa: BLE001 - the replica's failure becomes the call's status
                raise _failure(err, self.config.grpc.retry_after_ms) from None
            finally:
                if not finished:  # cancelled, past the deadline, or failed: abort the engine request
                    await _cancel(stream)
        finally:
            self.limits.release()

    def _admit(self, context, stream: bool) -> str:
        caller = self.keys.caller(context.invocation_metadata())
        if caller is None:  # the interceptor lets no such call through; kept for servicers used without it
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "incorrect or missing API key")
        try:
            self.limits.admit(caller, stream)
        except Overloaded as err:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), err.retry_after_ms) from None
        return caller

    def _request(self, request, context, to_request) -> GenerateRequest:
        try:
            req = to_request(request)
        except ApiError as err:
            raise Refusal.of(err, self.config.grpc.retry_after_ms) from None
        spec = self.config.model(req.model)
        if spec is None or req.model not in self.models:
            raise Refusal(grpc.StatusCode.NOT_FOUND, f"model: {req.model!r} does not exist; available: "
                                                     f"{[m.name for m in self.config.models]}")
        if spec.routing.prefix_affinity:
            req.prefix_hashes = prefix_hashes(routing_text(req), spec.routing.prefix_chunk_chars)
        limit = self.config.limits.request_timeout_s
        remaining = context.time_remaining()
        req.deadline = time.time() + (limit if remaining is None else min(remaining, limit))
        return req

    async def _start(self, req: GenerateRequest):
        """(replica stream, its StreamHead), trying a second replica once if the first fails before a token."""
        client, retry_ms = self.models[req.model], self.config.grpc.retry_after_ms
        for attempt in (0, 1):
            stream = client.stream(req)
            try:
                head = await anext(stream)
            except StopAsyncIteration:
                raise Refusal(grpc.StatusCode.INTERNAL, "the replica ended the stream before its first token") \
                    from None
            except (asyncio.CancelledError, GeneratorExit):
                await _cancel(stream)
                raise
            except Exception as err:  # noqa: BLE001 - replica unreachable, died, or its engine is dead
                await _cancel(stream)
                if attempt == 0 and _retryable(err):
                    log.warning("request %s failed before its first token (%r); retrying once", req.request_id, err)
                    _prepare_retry(req)
                    continue
                raise _failure(err, retry_ms) from None
            if isinstance(head, StreamHead):
                return stream, head
            await _cancel(stream)
            if isinstance(head, ApiError) and head.status == 429 and attempt == 0:  # that replica's queue is full
                _prepare_retry(req)
                continue
            raise Refusal.of(head, retry_ms) if isinstance(head, ApiError) else \
                Refusal(grpc.StatusCode.INTERNAL, f"unexpected first item {type(head).__name__}")
        raise AssertionError("unreachable")

    # ---- unary ----
    async def _tokenize(self, request, context) -> tuple[list[int], int]:
        self._admit(context, stream=False)
        req = self._request(request, context, convert.to_tokenize)
        try:
            result = await self.models[req.model].tokenize(req)
        except Exception as err:  # noqa: BLE001
            raise _failure(err, self.config.grpc.retry_after_ms) from None
        if isinstance(result, ApiError):
            raise Refusal.of(result, self.config.grpc.retry_after_ms)
        return result["token_ids"], result["max_model_len"]


def _prepare_retry(req: GenerateRequest) -> None:
    """The retry goes elsewhere (the router ranks the failed replica last) under a fresh engine request id."""
    if req.routed_replica:
        req.avoid_replicas = [*req.avoid_replicas, req.routed_replica]
    req.routed_replica = None
    req.request_id = req.request_id.split("~")[0] + "~retry"
