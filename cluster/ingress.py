"""The HTTP ingress: auth, limits, parsing, model routing, SSE, deadlines. A plain class; `cluster.app` deploys it.

Flow: request -> API key check (constant time; every route but /health) -> body size limit (413) -> JSON and
field validation (`cluster.protocol`, 400) -> the model's replicas by name (404 for an unknown model) through a
`ModelClient` (a Ray Serve handle in the cluster, an in-process LLMServer in unit tests) -> the first stream item
decides the status (an `ApiError` from the replica, or "ok") -> JSON body or SSE frames. Leaving early (client
disconnect, deadline) cancels the replica stream, which aborts the engine request. Overload: the engine's queue
limit gives 429, Serve's `max_queued_requests` 503, both with Retry-After; nothing admitted is dropped.
"""

import asyncio
import hmac
import logging
import time
from typing import Protocol

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.config import AppConfig
from cluster.errors import ApiError, bad_request, not_found_model, overloaded, timed_out, unauthorized
from cluster.metrics import HttpMetrics
from cluster.protocol import parse_chat, parse_completion, parse_json, parse_responses, prefix_hashes, routing_text

log = logging.getLogger(__name__)
PARSERS = {"chat": parse_chat, "completion": parse_completion, "response": parse_responses}
TIMEOUT_HEADER = "x-request-timeout"  # seconds; may shorten (never extend) limits.request_timeout_s


class ModelClient(Protocol):
    """How the ingress reaches one model's replicas."""

    def stream(self, req):  # -> async iterator: head item, then frames or a body
        ...

    async def health(self) -> bool: ...


class Ingress:
    def __init__(self, config: AppConfig | dict, models: dict[str, ModelClient], hub=None):
        from cluster.config import load_config  # noqa: PLC0415

        self.config = config if isinstance(config, AppConfig) else load_config(config)
        self.models = models
        self.hub = hub
        self._keys = [k.encode() for k in self.config.auth.resolve()]
        self.http_metrics = HttpMetrics()
        self._pusher: asyncio.Task | None = None
        self.started = int(time.time())
        self.asgi_app = self._build_app()

    def __serve_build_asgi_app__(self):
        return self.asgi_app

    # ---- app ----
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="gptoss-serve", docs_url=None, redoc_url=None, openapi_url=None)
        api = APIRouter(dependencies=[Depends(self._authorize)])
        api.add_api_route("/v1/chat/completions", self._endpoint("chat"), methods=["POST"])
        api.add_api_route("/v1/completions", self._endpoint("completion"), methods=["POST"])
        api.add_api_route("/v1/responses", self._endpoint("response"), methods=["POST"])
        api.add_api_route("/v1/models", self.list_models, methods=["GET"])
        api.add_api_route("/v1/models/{model_id}", self.get_model, methods=["GET"])
        api.add_api_route("/metrics", self.metrics, methods=["GET"])
        app.include_router(api)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_exception_handler(ApiError, self._api_error)
        app.add_exception_handler(StarletteHTTPException, _http_error)
        app.add_exception_handler(Exception, _internal_error)
        return _CountStatus(app, self.http_metrics)

    async def _authorize(self, request: Request) -> None:
        self._ensure_pusher()
        if not self._keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given_b = given.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self._keys:  # every key compared, in constant time each: no early exit to time
            ok |= hmac.compare_digest(key, given_b)
        if not ok:
            raise unauthorized()

    def _api_error(self, request: Request, err: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(self.config.limits.retry_after_s)} if err.status in (429, 503) else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    # ---- generation endpoints ----
    def _endpoint(self, kind: str):
        async def endpoint(request: Request) -> Response:
            return await self.generate(kind, request)

        endpoint.__name__ = f"create_{kind}"
        return endpoint

    async def generate(self, kind: str, request: Request) -> Response:
        req = PARSERS[kind](parse_json(await self._read_body(request)), int(time.time()))
        spec = self.config.model(req.model)
        if spec is None:
            raise not_found_model(req.model, [m.name for m in self.config.models])
        if spec.routing.prefix_affinity:
            req.prefix_hashes = prefix_hashes(routing_text(req), spec.routing.prefix_chunk_chars)
        timeout = self._timeout(request)
        deadline = time.monotonic() + timeout
        stream = self.models[req.model].stream(req)
        try:
            head = await _next_before(stream, deadline, timeout)
            if isinstance(head, ApiError):
                raise head
            if req.stream:
                return StreamingResponse(self._frames(stream, deadline, timeout), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            body = await _next_before(stream, deadline, timeout)
            async for _ in stream:  # nothing follows the body; let the replica's generator end on its own
                pass
        except BaseException:
            await _cancel(stream)
            raise
        return JSONResponse(body)

    async def _frames(self, stream, deadline: float, timeout: float):
        try:
            while True:
                try:
                    frame = await _next_before(stream, deadline, timeout)
                except StopAsyncIteration:
                    return
                except ApiError as err:  # past the deadline mid-stream: the status is sent; say it in the stream
                    yield f"data: {_json(err.body())}\n\n"
                    return
                yield frame
        finally:  # also on client disconnect (this generator is cancelled): abort the engine request
            await _cancel(stream)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"The request body of {declared} bytes exceeds the limit of {limit} bytes.",
                           param="body", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"The request body exceeds the limit of {limit} bytes.", param="body",
                               code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _timeout(self, request: Request) -> float:
        limit = self.config.limits.request_timeout_s
        given = request.headers.get(TIMEOUT_HEADER)
        if given is None:
            return limit
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise bad_request(f"the {TIMEOUT_HEADER} header must be a positive number of seconds, got {given!r}",
                              TIMEOUT_HEADER)
        return min(value, limit)

    # ---- other routes ----
    async def list_models(self) -> dict:
        return {"object": "list", "data": [self._model_card(m.name) for m in self.config.models]}

    async def get_model(self, model_id: str) -> dict:
        if self.config.model(model_id) is None:
            raise not_found_model(model_id, [m.name for m in self.config.models])
        return self._model_card(model_id)

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "gptoss-serve"}

    async def health(self) -> JSONResponse:
        results = await asyncio.gather(*(_healthy(client) for client in self.models.values()))
        models = {name: "ok" if ok else "unhealthy" for name, ok in zip(self.models, results)}
        status = 200 if all(results) else 503
        return JSONResponse({"status": "ok" if status == 200 else "unhealthy", "models": models}, status_code=status)

    async def metrics(self) -> Response:
        if self.hub is None:
            return Response(b"", media_type="text/plain; version=0.0.4")
        await self.push_metrics()
        text = await self.hub.render.remote()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _ensure_pusher(self) -> None:
        if self.hub is not None and self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def _push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_push_interval_s)
            await self.push_metrics()

    async def push_metrics(self) -> None:
        try:
            await self.hub.push.remote(f"ingress/{id(self):x}", self.http_metrics.snapshot())
        except Exception as err:  # noqa: BLE001 - metrics must never fail a request
            log.warning("metrics push failed: %r", err)


# -- helpers -----------------------------------------------------------------------------------------------------------


async def _next_before(stream, deadline: float, timeout: float):
    """The stream's next item, or 408 (ApiError) once the deadline passes; 503 when Serve's queue is full."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timed_out(timeout)
    try:
        return await asyncio.wait_for(anext(stream), remaining)
    except TimeoutError:
        raise timed_out(timeout) from None
    except Exception as err:
        if type(err).__name__ == "BackPressureError":  # ray.serve.exceptions; not imported so tests need no Ray
            raise overloaded(503, "the model's request queue is full") from None
        raise


async def _cancel(stream) -> None:
    cancel = getattr(stream, "cancel", None)
    if cancel is not None:  # a Ray Serve response generator: cancelling it cancels the replica's generator
        cancel()
    else:
        await stream.aclose()


async def _healthy(client) -> bool:
    try:
        return bool(await asyncio.wait_for(client.health(), 10))
    except Exception:  # noqa: BLE001 - any failure to answer is unhealthy
        return False


def _json(payload) -> str:
    import json  # noqa: PLC0415

    return json.dumps(payload, separators=(",", ":"))


def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if err.status_code == 404 else "invalid_request_error"
    body = ApiError(err.status_code, str(err.detail), kind, None, None).body()
    return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))


def _internal_error(request: Request, err: Exception) -> JSONResponse:
    log.exception("internal error", exc_info=err)
    return JSONResponse(ApiError(500, "Internal server error.", "server_error").body(), status_code=500)


class _CountStatus:
    """ASGI wrapper: counts responses by route and status (pure ASGI, so streaming and disconnects are untouched)."""

    def __init__(self, app: FastAPI, metrics: HttpMetrics):
        self.app, self.http_metrics = app, metrics

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                route = scope.get("route")
                self.http_metrics.on_response(getattr(route, "path", "unmatched"), message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
