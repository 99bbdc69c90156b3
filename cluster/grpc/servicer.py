"""The gptoss.v1.Inference servicer: one call -> limits -> validated request -> the front door -> protobuf messages.

Flow of a streaming call (Generate, Chat): the key was checked by `AuthInterceptor` -> `Limits.admit` (stream slot,
per-key rates; refused: RESOURCE_EXHAUSTED + `retry-after-ms`) -> `convert.to_*` (INVALID_ARGUMENT naming the
field) -> a Chat naming a `previous_response_id` or to be stored goes through cluster/responses/chat.py (the stored
turns first; the finished chat stored, its id on the last message) -> `FrontDoor.open` with the call's deadline (cluster/frontdoor.py: drain, model, routing stamp, deadline for
the engine, the replica's head, one retry before the first token) -> initial metadata `x-gptoss-replica` -> every
delta becomes a message; tokens are charged to the caller's token bucket -> the call ends: done, or cancelled
(grpc cancels this coroutine; `finally` closes the front-door call, which aborts the engine request and frees its KV
blocks), or past its deadline / the replica gone (the front door's `ApiError`, rendered as the status by `Refusal`).
"""

import logging

import grpc

from cluster.errors import ApiError
from cluster.frontdoor import FrontDoor
from cluster.grpc import convert
from cluster.grpc.auth import ApiKeys, caller
from cluster.grpc.limits import Limits, Overloaded
from cluster.output.deltas import SampleDelta, StreamEnd
from cluster.responses.chat import ChatTurn
from cluster.responses.service import ResponsesService

log = logging.getLogger(__name__)
REPLICA_HEADER = "x-gptoss-replica"
RETRY_HEADER = "retry-after-ms"
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE}
_RETRYABLE = {"server_overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED}  # a 503 that is load, not absence


class Refusal(Exception):
    """Ends the call with `code`; `retry_after_ms` adds the retry hint to the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after_ms = code, message, retry_after_ms

    @classmethod
    def of(cls, err: ApiError, retry_after_ms: int) -> "Refusal":
        code = _RETRYABLE.get(err.code) or _CODES.get(err.status, grpc.StatusCode.INTERNAL)
        hinted = code is grpc.StatusCode.RESOURCE_EXHAUSTED or err.code == "server_shutting_down"
        return cls(code, convert.error_text(err), retry_after_ms if hinted else None)

    async def abort(self, context) -> None:
        trailing = ((RETRY_HEADER, str(self.retry_after_ms)),) if self.retry_after_ms is not None else ()
        await context.abort(self.code, self.message, trailing)


class InferenceServicer:
    """Implements gptoss.v1.Inference over a `FrontDoor` (which holds the config and the models' clients)."""

    def __init__(self, door: FrontDoor, pb, keys: ApiKeys, limits: Limits, responses=None):
        self.door, self.config, self.pb = door, door.config, pb
        self.responses = responses or ResponsesService(door, door.config)  # stored conversations for Chat
        self.keys, self.limits = keys, limits
        self.retry_ms = self.config.grpc.retry_after_ms

    # ---- RPCs ----
    async def Generate(self, request, context):
        async for message in self._guarded(context, self._stream(request, context, convert.to_generate,
                                                                  convert.GenerateOutput)):
            yield message

    async def Chat(self, request, context):
        turn = ChatTurn(self.responses) if request.previous_response_id or request.store else None
        async for message in self._guarded(context, self._stream(request, context, convert.to_chat,
                                                                  convert.ChatOutput, turn)):
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
        return self.pb.ListModelsResponse(models=[self.pb.Model(name=name, created=self.door.started,
                                                                owned_by="gptoss-serve")
                                                  for name in self.door.model_names()])

    # ---- streaming ----
    async def _guarded(self, context, messages):
        """Yields `messages`; a Refusal raised while making them ends the call with its status."""
        try:
            async for message in messages:
                yield message
        except Refusal as refusal:
            await refusal.abort(context)

    async def _stream(self, request, context, to_request, output_cls, turn=None):
        """`turn`: a Chat over stored responses (cluster/responses/chat.py), or None."""
        identity = self._admit(context, stream=True)
        try:
            req = self._convert(request, to_request)
            try:
                if turn is not None:
                    await turn.prepare(req, request.previous_response_id, request.store, identity)
                call = await self.door.open(req, context.time_remaining(), identity)
            except ApiError as err:
                raise Refusal.of(err, self.retry_ms) from None
            try:
                await context.send_initial_metadata(((REPLICA_HEADER, call.head.replica),))
                self.limits.charge_tokens(identity, call.head.prompt_tokens)
                output = output_cls(self.pb, req)
                async for item in call:
                    if isinstance(item, ApiError):  # past its deadline in the engine
                        raise Refusal.of(item, self.retry_ms)
                    if isinstance(item, SampleDelta):
                        self.limits.charge_tokens(identity, len(item.token_ids))
                    message = output.message(item)
                    if turn is not None:
                        turn.observe(item)
                        if isinstance(item, StreamEnd):
                            message.response_id = await turn.finish(item) or ""
                    yield message
            except ApiError as err:  # the replica died mid-stream, or went silent past the deadline
                raise Refusal.of(err, self.retry_ms) from None
            finally:
                await call.close()  # cancelled, failed or done: an unfinished engine request is aborted
        finally:
            self.limits.release()

    def _admit(self, context, stream: bool) -> str:
        identity = caller(self.keys, context.invocation_metadata())
        if identity is None:  # the interceptor lets no such call through; kept for servicers used without it
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "incorrect or missing API key")
        try:
            self.limits.admit(identity, stream)
        except Overloaded as err:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), err.retry_after_ms) from None
        return identity

    def _convert(self, request, to_request):
        try:
            return to_request(request)
        except ApiError as err:
            raise Refusal.of(err, self.retry_ms) from None

    # ---- unary ----
    async def _tokenize(self, request, context) -> tuple[list[int], int]:
        identity = self._admit(context, stream=False)
        req = self._convert(request, convert.to_tokenize)
        try:
            result = await self.door.tokenize(req, identity)
        except ApiError as err:
            raise Refusal.of(err, self.retry_ms) from None
        return result["token_ids"], result["max_model_len"]
