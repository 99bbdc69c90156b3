"""The Responses routes of the HTTP ingress: HTTP in, `ResponsesService` calls, JSON or server-sent events out.

Flow: POST /v1/responses (create), POST /v1/responses/input_tokens, GET /v1/responses/{id} (JSON, or with
`stream=true` the stored events after `starting_after`), GET /v1/responses/{id}/input_items, DELETE
/v1/responses/{id}, POST /v1/responses/{id}/cancel -> query parameters checked strictly (an unknown one, a bad value:
400 naming it) -> the service, with the caller's identity the API-key check put on the request -> JSON, or SSE frames
where a mid-stream error is an `error` frame. The ingress mounts these routes; the gRPC gateway uses the service.
"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from cluster.errors import ApiError, bad_request
from cluster.protocol import parse_json
from cluster.protocol.response_items import INCLUDABLE
from cluster.protocol.schemas import route_responses

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ResponsesRoutes:
    def __init__(self, ingress, service):
        self.ingress, self.service = ingress, service

    def add_to(self, api: APIRouter) -> None:
        add = api.add_api_route
        add("/v1/responses", self.create, methods=["POST"], responses=route_responses("/v1/responses"),
            name="create_response")
        add("/v1/responses/input_tokens", self.input_tokens, methods=["POST"],
            responses=route_responses("/v1/responses/input_tokens"))
        add("/v1/responses/{response_id}", self.retrieve, methods=["GET"],
            responses=route_responses("/v1/responses/{response_id}"))
        add("/v1/responses/{response_id}", self.delete, methods=["DELETE"],
            responses=route_responses("/v1/responses/{response_id}", "delete"))
        add("/v1/responses/{response_id}/input_items", self.input_items, methods=["GET"],
            responses=route_responses("/v1/responses/{response_id}/input_items"))
        add("/v1/responses/{response_id}/cancel", self.cancel, methods=["POST"],
            responses=route_responses("/v1/responses/{response_id}/cancel"))

    # ---- routes ----
    async def create(self, request: Request):
        _query(request, {})
        data = parse_json(await self.ingress._read_body(request))
        result = await self.service.create(data, request.state.caller, self.ingress._timeout(request))
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(frames(result), media_type="text/event-stream", headers=SSE_HEADERS)

    async def input_tokens(self, request: Request) -> dict:
        _query(request, {})
        data = parse_json(await self.ingress._read_body(request))
        return await self.service.count_input_tokens(data, request.state.caller)

    async def retrieve(self, response_id: str, request: Request):
        q = _query(request, {"stream", "starting_after", "include", "include[]", "include_obfuscation"})
        include = _include(q)
        _false(q, "include_obfuscation", "events are not padded")
        if not _bool(q, "stream"):
            if "starting_after" in q:
                raise bad_request("starting_after is only used with stream=true", "starting_after")
            return await self.service.retrieve(response_id, request.state.caller, include)
        after = _int(q, "starting_after", 0, None)
        events = await self.service.events(response_id, request.state.caller, after)
        return StreamingResponse(frames(events), media_type="text/event-stream", headers=SSE_HEADERS)

    async def input_items(self, response_id: str, request: Request) -> dict:
        q = _query(request, {"after", "limit", "order", "include", "include[]"})
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request(f"order must be asc or desc, got {order!r}", "order")
        limit = _int(q, "limit", 1, 100)
        return await self.service.input_items(response_id, request.state.caller, q.get("after"),
                                              20 if limit is None else limit, order, _include(q))

    async def delete(self, response_id: str, request: Request) -> dict:
        _query(request, set())
        return await self.service.delete(response_id, request.state.caller)

    async def cancel(self, response_id: str, request: Request) -> dict:
        _query(request, set())
        return await self.service.cancel(response_id, request.state.caller)


async def frames(items):
    """SSE frames of a stream; an ApiError (item or raised) becomes an error frame and ends it."""
    from cluster.ingress import _json  # noqa: PLC0415 - one JSON rendering for every stream

    try:
        async for item in items:
            if isinstance(item, ApiError):
                yield f"data: {_json(item.body())}\n\n"
                return
            yield item
    except ApiError as err:
        yield f"data: {_json(err.body())}\n\n"
    finally:
        await items.aclose()


# -- query parameters ---------------------------------------------------------------------------------------------
def _query(request: Request, known: set[str]) -> dict:
    """The query parameters (one value each, `include` may repeat); an unknown one is a 400 naming it."""
    out: dict = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise bad_request(f"{name} is not a query parameter of this route (it takes: "
                              f"{', '.join(sorted(known)) or 'none'})", name, "unknown_parameter")
        if name in ("include", "include[]"):
            out.setdefault("include", []).append(value)
        elif name in out:
            raise bad_request(f"{name} is given twice", name)
        else:
            out[name] = value
    return out


def _include(q: dict) -> list[str]:
    for value in q.get("include", []):
        if value not in INCLUDABLE:
            raise bad_request(f"include: {value!r} is not available; this server offers {', '.join(INCLUDABLE)}",
                              "include")
    return q.get("include", [])


def _bool(q: dict, name: str) -> bool:
    value = q.get(name, "false")
    if value not in ("true", "false"):
        raise bad_request(f"{name} must be true or false, got {value!r}", name)
    return value == "true"


def _false(q: dict, name: str, why: str) -> None:
    if _bool(q, name):
        raise bad_request(f"{name}: only false is supported ({why})", name, "unsupported_parameter")


def _int(q: dict, name: str, low: int, high: int | None) -> int | None:
    if name not in q:
        return None
    value = q[name]
    if not value.lstrip("-").isdigit() or not low <= int(value) <= (high if high is not None else 1 << 62):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise bad_request(f"{name} must be an integer {bounds}, got {value!r}", name)
    return int(value)
