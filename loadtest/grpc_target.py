"""The gRPC target: gptoss.v1.Inference/Chat (--api chat) or Generate (--api completions: the raw prompt), streaming,
on the gateway, with the generated stubs (cluster/grpc).

Accepted = the call's initial metadata (the gateway sends it once a replica has the request); each message's
content is a Delta per channel (analysis -> reasoning, final -> final; commentary is not counted); the last message's
finish_reason -> Finish and its usage -> Usage. Statuses: RESOURCE_EXHAUSTED -> http_429, UNAVAILABLE -> http_503
(both with the `retry-after-ms` trailing metadata as the retry hint), DEADLINE_EXCEEDED -> http_408, any other ->
http_other before acceptance and stream_error after it (a status is a clear error), except grpc core's own
UNAVAILABLE for a connection that went away mid-stream (stream_reset, as HTTP's); a stream that ends without a
finish reason yields none, which the accounting counts as lost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from loadtest.target import Accepted, Delta, Event, Finish, TargetError, TargetRequest, Usage

RETRY_HEADER = "retry-after-ms"
TRANSPORT = ("Socket closed", "Connection reset", "Broken pipe", "failed to connect")  # grpc core's own UNAVAILABLE


class GrpcTarget:
    def __init__(self, address: str, model: str, api_key: str | None = None, timeout_s: float = 300.0,
                 ignore_eos: bool = False, api: str = "chat") -> None:
        import grpc  # noqa: PLC0415 - only for gRPC runs

        from cluster.grpc import codegen  # noqa: PLC0415 - the generated stubs

        stubs = codegen.stubs()
        self.grpc, self.pb, self.name, self.model, self.api = grpc, stubs.pb, f"grpc-{api}", model, api
        # reconnect within a second once the server is back (grpc's default backoff grows to 120 s, which would
        # measure the client's patience instead of the server's recovery)
        self.channel = grpc.aio.insecure_channel(address.removeprefix("grpc://"), options=[
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self.stub = stubs.grpc.InferenceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout_s, self.ignore_eos = timeout_s, ignore_eos
        self.roles = {"system": self.pb.ROLE_SYSTEM, "user": self.pb.ROLE_USER, "assistant": self.pb.ROLE_ASSISTANT}
        self.finish = {self.pb.FINISH_REASON_STOP: "stop", self.pb.FINISH_REASON_LENGTH: "length",
                       self.pb.FINISH_REASON_ABORT: "abort", self.pb.FINISH_REASON_TOOL_CALLS: "tool_calls"}

    def request(self, req: TargetRequest):
        sampling = self.pb.SamplingParams(max_tokens=req.max_tokens, ignore_eos=self.ignore_eos)
        if self.api == "completions":
            return self.pb.GenerateRequest(model=self.model, prompt=req.prompt, sampling=sampling)
        messages = [self.pb.Message(role=self.roles[m["role"]], content=m["content"]) for m in req.messages]
        return self.pb.ChatRequest(model=self.model, messages=messages, sampling=sampling)

    async def stream(self, req: TargetRequest) -> AsyncIterator[Event]:
        rpc = self.stub.Generate if self.api == "completions" else self.stub.Chat
        call = rpc(self.request(req), metadata=self.metadata, timeout=self.timeout_s)
        accepted = False
        try:
            await call.initial_metadata()
            if call.done() and await call.code() != self.grpc.StatusCode.OK:   # refused: no stream followed
                raise self.grpc.aio.AioRpcError(await call.code(), None, await call.trailing_metadata(),
                                                await call.details())
            accepted = True
            yield Accepted(time.perf_counter())
            async for message in call:
                for event in self.events(message, time.perf_counter()):
                    yield event
        except self.grpc.aio.AioRpcError as err:
            raise self.error(err, accepted) from None
        finally:
            call.cancel()

    def events(self, message, t: float) -> list[Event]:
        out: list[Event] = []
        if self.api == "completions" and message.text:     # GenerateResponse: the raw text, counted as final
            out.append(Delta(t, "final", message.text))
        for part in getattr(message, "content", ()):
            if part.text and part.channel in (self.pb.CHANNEL_ANALYSIS, self.pb.CHANNEL_FINAL):
                out.append(Delta(t, "reasoning" if part.channel == self.pb.CHANNEL_ANALYSIS else "final", part.text))
        if message.finish_reason:
            out.append(Finish(self.finish.get(message.finish_reason, "stop")))
        if message.HasField("usage"):
            u = message.usage
            out.append(Usage(u.prompt_tokens, u.completion_tokens, u.reasoning_tokens))
        return out

    def error(self, err, accepted: bool) -> TargetError:
        code, codes = err.code(), self.grpc.StatusCode
        hint = dict(err.trailing_metadata() or ()).get(RETRY_HEADER)
        retry = float(hint) / 1e3 if hint else None
        text = f"gRPC {code.name}: {err.details()}"[:200]
        if code == codes.RESOURCE_EXHAUSTED and not accepted:
            return TargetError("http_429", text, 429, retry)
        if code == codes.UNAVAILABLE and not accepted:
            return TargetError("http_503", text, 503, retry)
        if code == codes.DEADLINE_EXCEEDED:
            return TargetError("http_408", text, 408)
        if code == codes.UNAVAILABLE and any(s in (err.details() or "") for s in TRANSPORT):
            return TargetError("stream_reset", text)   # the connection went away: no status from the server
        return TargetError("stream_error" if accepted else "http_other", text, 500)

    async def warm(self) -> None:
        try:
            await self.stub.ListModels(self.pb.ListModelsRequest(), metadata=self.metadata, timeout=10)
        except self.grpc.aio.AioRpcError:
            pass

    async def aclose(self) -> None:
        await self.channel.close()
