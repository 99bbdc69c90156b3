"""The HTTP ingress: the OpenAI-compatible API over the front door. A plain class; `cluster.app` deploys it.

Flow: request -> API key check (cluster/auth.py, constant time; every route but /health; the caller's identity
kept for the front door) -> body size limit (413) -> JSON and field validation (`cluster.protocol`, 400 naming the
field) -> `FrontDoor.open` (drain, model, routing stamp, deadline, the replica's head, one retry before the first
token; cluster/frontdoor.py) -> JSON body, or SSE frames as the replica makes them; a mid-stream error (the
deadline) becomes an `error` frame. /v1/responses and its stored-response routes go through the Responses service
(cluster/responses/: store, previous_response_id, background runs; routes in cluster/responses/http.py). Leaving
early (client disconnect) closes the call, which aborts the engine request. Errors are `ApiError`s rendered as
OpenAI error bodies; 429 and 503 carry Retry-After.
"""

import logging
import os
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.auth import ApiKeys, bearer
from cluster.config import AppConfig
from cluster.errors import ApiError, bad_request, not_found_model, unauthorized
from cluster.frontdoor import Call, FrontDoor, ModelClient
from cluster.metrics import HttpMetrics
from cluster.protocol import parse_chat, parse_completion, parse_json
from cluster.responses.http import ResponsesRoutes
from cluster.responses.service import ResponsesService
from cluster.protocol.schemas import ROUTES, route_responses

log = logging.getLogger(__name__)
PARSERS = {"chat": parse_chat, "completion": parse_completion}
TIMEOUT_HEADER = "x-request-timeout"  # seconds; may shorten (never extend) limits.request_timeout_s
REPLICA_HEADER = "x-gptoss-replica"  # the replica that served the request (as the gRPC gateway's initial metadata)
VERSION = "1.0.0"  # of the HTTP API as /openapi.json describes it


class Ingress:
    def __init__(self, config: AppConfig | dict, models: dict[str, ModelClient], hub=None, source: str | None = None):
        from cluster.config import load_config  # noqa: PLC0415

        self.config = config if isinstance(config, AppConfig) else load_config(config)
        self.keys = ApiKeys(self.config.auth.resolve())
        self.http_metrics = HttpMetrics()
        self.door = FrontDoor(self.config, models, hub, source or f"ingress/{os.getpid()}-{id(self):x}",
                              self.http_metrics.snapshot)
        self.hub = hub
        self.responses = ResponsesService(self.door, self.config)  # /v1/responses: stored, background, tools
        self.asgi_app = self._build_app()

    def __serve_build_asgi_app__(self):
        return self.asgi_app

    # ---- app ----
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="gptoss-serve", version=VERSION, docs_url=None, redoc_url=None,
                      openapi_url="/openapi.json")
        api = APIRouter(dependencies=[Depends(self._authorize)])
        for path, kind in (("/v1/chat/completions", "chat"), ("/v1/completions", "completion")):
            api.add_api_route(path, self._endpoint(kind), methods=["POST"], responses=route_responses(path))
        ResponsesRoutes(self, self.responses).add_to(api)
        api.add_api_route("/v1/models", self.list_models, methods=["GET"], responses=route_responses("/v1/models"))
        api.add_api_route("/v1/models/{model_id}", self.get_model, methods=["GET"],
                          responses=route_responses("/v1/models/{model_id}"))
        api.add_api_route("/metrics", self.metrics, methods=["GET"], include_in_schema=False)
        app.include_router(api)
        app.openapi = lambda: openapi_schema(app, self.door.model_names())
        app.add_api_route("/health", self.health, methods=["GET"], include_in_schema=False)
        app.add_exception_handler(ApiError, self._api_error)
        app.add_exception_handler(StarletteHTTPException, _http_error)
        app.add_exception_handler(Exception, _internal_error)
        return _CountStatus(app, self.http_metrics)

    async def _authorize(self, request: Request) -> None:
        """The caller's identity (cluster/auth.py) on `request.state.caller`, or 401."""
        caller = self.keys.caller(bearer(request.headers.get("authorization")))
        if caller is None:
            raise unauthorized()
        request.state.caller = caller

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
        call = await self.door.open(req, self._timeout(request), request.state.caller)
        headers = {REPLICA_HEADER: call.head.replica}
        if req.stream:
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return StreamingResponse(_frames(call), media_type="text/event-stream", headers=headers)
        try:
            body = await call.next_item()
            async for _ in call:  # nothing follows the body; let the replica's generator end on its own
                pass
        finally:
            await call.close()
        return JSONResponse(body, headers=headers)

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

    def _timeout(self, request: Request) -> float | None:
        given = request.headers.get(TIMEOUT_HEADER)
        if given is None:
            return None
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise bad_request(f"the {TIMEOUT_HEADER} header must be a positive number of seconds, got {given!r}",
                              TIMEOUT_HEADER)
        return value

    # ---- other routes ----
    async def list_models(self) -> dict:
        return {"object": "list", "data": [self._model_card(name) for name in self.door.model_names()]}

    async def get_model(self, model_id: str) -> dict:
        if model_id not in self.door.model_names():
            raise not_found_model(model_id, self.door.model_names())
        return self._model_card(model_id)

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.door.started, "owned_by": "gptoss-serve"}

    async def health(self) -> JSONResponse:
        results = await self.door.health()
        if self.door.draining:
            return JSONResponse({"status": "draining", "models": {name: "draining" for name in results}},
                                status_code=503, headers={"Retry-After": str(self.config.limits.retry_after_s)})
        models = {name: "ok" if ok else "unhealthy" for name, ok in results.items()}
        status = 200 if all(results.values()) else 503
        return JSONResponse({"status": "ok" if status == 200 else "unhealthy", "models": models}, status_code=status)

    async def metrics(self) -> Response:
        if self.hub is None:
            return Response(b"", media_type="text/plain; version=0.0.4")
        await self.door.pusher.push()
        text = await self.hub.render.remote()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


# -- helpers -----------------------------------------------------------------------------------------------------------


def openapi_schema(app: FastAPI, models: list[str]) -> dict:
    """/openapi.json: FastAPI's routes and response bodies, plus the request bodies (parsed by hand in `generate`,
    so FastAPI does not know them) from the endpoints' pydantic models, all under components/schemas; `model`
    lists the served models."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi  # noqa: PLC0415

    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description="The OpenAI-compatible API of gptoss-serve: its own request and response models")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, (request_model, *_) in ROUTES.items():
        if request_model is None or not isinstance(path, str):
            continue
        body = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        body["properties"]["model"] = {"type": "string", "enum": models, "description": "a served model"}
        for name, definition in {**body.pop("$defs", {}), request_model.__name__: body}.items():
            if components.setdefault(name, definition) != definition:
                raise RuntimeError(f"two different schemas are named {name!r}; rename one of the models")
        schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{request_model.__name__}"}}}}
    app.openapi_schema = schema
    return schema



async def _frames(call: Call):
    """SSE frames of a streaming call; a mid-stream error (past the deadline, the replica gone) as an error frame."""
    try:
        async for item in call:
            if isinstance(item, ApiError):
                yield f"data: {_json(item.body())}\n\n"
                return
            yield item
    except ApiError as err:  # the status line is long sent: say it in the stream
        yield f"data: {_json(err.body())}\n\n"
    finally:  # also on client disconnect (this generator is cancelled): abort the engine request
        await call.close()


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
