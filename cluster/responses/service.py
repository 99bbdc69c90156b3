"""The Responses service: what a front door does with /v1/responses beyond one generation, the same for every
protocol (the HTTP ingress serves it; the gRPC gateway uses its conversations for Chat).

Flow of a create: the request is validated (cluster/protocol/responses.py) -> `store` defaults to the operator's
`responses.store` (refused when `allow_store` is false) -> `previous_response_id` loads the caller's chain from the
store (404 naming the field when it is not theirs or gone, 400 when it has not finished) -> its messages, then the
input, become the GenerateRequest (the conversation id is the chain's first response, which keys the python session)
-> a key past `max_store_bytes_per_key` is refused before anything runs -> background: the run starts here
(cluster/responses/runs.py) and the queued response object comes back at once (or its live event stream) ->
otherwise `FrontDoor.open` with the caller, the body or the events go out as the replica makes them, and the
replica's `ResponseRecord` (the whole response and the tool results the model read) is stored when it ends. The
reads (retrieve, input_items, events from `starting_after`), delete and cancel are scoped to the caller: another
key's response is a 404. A background response whose front door stopped (its claim lapsed) reads as failed.
"""

import asyncio
import logging
import secrets
import time

from cluster.errors import ApiError, bad_request
from cluster.output import tool_items
from cluster.output.responses import ResponseRecord
from cluster.protocol.responses import parse_request, to_generate
from cluster.responses.chain import chain_listings, chain_messages
from cluster.responses.runs import Runs, failed_body, initial_body
from cluster.responses.store import FOLLOWABLE, RUNNING, StoredResponse, open_store

log = logging.getLogger(__name__)
PURGE_EVERY_S = 600.0


def not_found(response_id: str, param: str = "response_id") -> ApiError:
    return ApiError(404, f"No response with id {response_id!r} is stored for this API key.", "invalid_request_error",
                    param, "response_not_found")


class ResponsesService:
    def __init__(self, door, config, store=None):
        self.door, self.config = door, config
        self.settings = config.responses
        self._store = store  # opened on first use (a database that is down fails requests, not the replica)
        self._store_lock = asyncio.Lock()
        self.runs = Runs(self)
        self._purged = 0.0

    async def store(self):
        """The connected store (a database that cannot be reached: 503)."""
        if not self.settings.allow_store:
            raise bad_request("storing responses is turned off on this server (responses.allow_store)", "store")
        if not self._connected:
            async with self._store_lock:
                if not self._connected:
                    try:
                        self._store = await (self._store or open_store(self.settings)).connect()
                    except Exception as err:  # noqa: BLE001 - down, refused, bad DSN, unwritable file
                        log.error("the response store cannot be opened: %r", err)
                        raise ApiError(503, f"The response store cannot be reached ({type(err).__name__}).",
                                       "server_error", None, "store_unavailable") from None
                    self._connected = True
        if time.time() - self._purged > PURGE_EVERY_S:
            self._purged = time.time()
            asyncio.get_running_loop().create_task(self._purge())
        return self._store

    _connected = False

    async def _purge(self) -> None:
        try:
            await self._store.purge()
        except Exception as err:  # noqa: BLE001 - retried at the next interval
            log.warning("purging expired responses failed: %r", err)

    # ---- create ----
    async def create(self, data: dict, caller: str, timeout: float | None):
        """A JSON body (dict) or an async iterator of SSE frames and ApiError items."""
        req = parse_request(data)
        store = self._store_flag(req)
        history, conversation, listings = await self._history(req, caller)
        greq = to_generate(req, int(time.time()), history, store, conversation=conversation, listings=listings)
        if store:
            await self._check_quota(caller)
        record = _record_of(req, greq, caller, self.settings.store_ttl)
        if req.background:
            return await self.runs.start(greq, record, bool(req.stream))
        call = await self.door.open(greq, timeout, caller)
        if greq.stream:
            return self._stream(call, record if store else None)
        return await self._body(call, record if store else None)

    def _store_flag(self, req) -> bool:
        """Whether this response is stored: the request's `store`, else the operator's default; background always."""
        if not self.settings.allow_store:
            for field, asked in (("store", req.store), ("background", req.background),
                                 ("previous_response_id", req.previous_response_id)):
                if asked:
                    raise bad_request(f"{field}: storing responses is turned off on this server "
                                      "(responses.allow_store)", field, "unsupported_parameter")
            return False
        return True if req.background else (self.settings.store if req.store is None else req.store)

    async def _history(self, req, caller: str) -> tuple[list[dict], str | None, dict]:
        if req.previous_response_id is None:
            return [], None, {}
        store = await self.store()
        chain = await store.chain(req.previous_response_id, caller)
        if chain is None:
            raise not_found(req.previous_response_id, "previous_response_id")
        last = chain[-1]
        last = await self._settle(last) if last.status in RUNNING else last
        if last.status not in FOLLOWABLE:
            raise bad_request(f"previous_response_id {last.id!r} is {last.status}; only a completed or incomplete "
                              "response can be continued", "previous_response_id")
        return chain_messages(chain), chain[0].conversation or chain[0].id, chain_listings(chain)

    async def _check_quota(self, caller: str) -> None:
        used = await (await self.store()).usage(caller)
        cap = self.settings.max_store_bytes_per_key
        if used >= cap:
            raise bad_request(f"store: this API key's stored responses take {used} bytes, the limit is {cap}; delete "
                              "some (DELETE /v1/responses/{id}) or send store: false", "store", "store_quota_exceeded")

    async def _body(self, call, record: StoredResponse | None) -> dict:
        try:
            body = await call.next_item()
            stored = None
            async for item in call:
                if isinstance(item, ResponseRecord):
                    stored = item
                elif isinstance(item, ApiError):
                    raise item
        finally:
            await call.close()
        if record is not None and stored is not None:
            await self._save(record, stored)
        return body

    async def _stream(self, call, record: StoredResponse | None):
        try:
            async for item in call:
                if isinstance(item, ResponseRecord):
                    if record is not None:
                        await self._save(record, item)
                    continue
                yield item
                if isinstance(item, ApiError):
                    return
        except ApiError as err:
            yield err
        finally:
            await call.close()

    async def _save(self, record: StoredResponse, result: ResponseRecord) -> None:
        record.status, record.body, record.hidden = result.body["status"], result.body, result.hidden
        try:
            await (await self.store()).insert(record)
        except Exception as err:  # noqa: BLE001 - the answer went out; say it was not kept
            log.error("response %s could not be stored: %r", record.id, err)
            raise ApiError(503, f"The response was generated but could not be stored ({type(err).__name__}); "
                                "retry, or send store: false.", "server_error", "store", "store_unavailable") from None

    # ---- reads ----
    async def get(self, response_id: str, caller: str) -> StoredResponse:
        r = await (await self.store()).get(response_id, caller)
        if r is None:
            raise not_found(response_id)
        return await self._settle(r) if r.status in RUNNING else r

    async def _settle(self, r: StoredResponse) -> StoredResponse:
        """A running response whose claim lapsed (its front door stopped) becomes failed."""
        if self.runs.live(r.id) or r.lease_until is None or r.lease_until >= time.time():
            return r
        store = await self.store()
        await store.lapse(r.id, failed_body(r.body, "the server running this background response stopped before "
                                                    "it finished"))
        return await store.get(r.id, r.owner) or r

    async def retrieve(self, response_id: str, caller: str, include: list[str]) -> dict:
        return view((await self.get(response_id, caller)).body, include)

    async def input_items(self, response_id: str, caller: str, after: str | None, limit: int, order: str,
                          include: list[str]) -> dict:
        items = [view_item(i, include) for i in (await self.get(response_id, caller)).input_items]
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((n for n, i in enumerate(items) if i.get("id") == after), None)
            if at is None:
                raise bad_request(f"after: no input item {after!r} in this response", "after")
            items = items[at + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

    async def delete(self, response_id: str, caller: str) -> dict:
        await self.runs.cancel_local(response_id)
        if not await (await self.store()).delete(response_id, caller):
            raise not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, response_id: str, caller: str) -> dict:
        r = await self.get(response_id, caller)
        if not r.background:
            raise bad_request("only a background response can be cancelled (this one was answered in the request)",
                              "response_id")
        if r.status == "cancelled":
            return r.body
        if r.status not in RUNNING:
            raise bad_request(f"this response is {r.status}; only a queued or in-progress response can be cancelled",
                              "response_id")
        return await self.runs.cancel(r)

    async def events(self, response_id: str, caller: str, starting_after: int | None):
        """The stored event stream of a background response (created with stream: true), after a sequence number."""
        r = await self.get(response_id, caller)
        if not (r.background and r.stream):
            raise bad_request("stream: only a background response created with stream: true has an event stream; "
                              "GET it without stream", "stream")
        return self.runs.follow(r, -1 if starting_after is None else starting_after)

    async def count_input_tokens(self, data: dict, caller: str) -> dict:
        req = parse_request(data)
        history, conversation, listings = await self._history(req, caller)
        greq = to_generate(req, int(time.time()), history, False, conversation=conversation, listings=listings)
        result = await self.door.tokenize(greq, caller)
        return {"object": "response.input_tokens", "input_tokens": len(result["token_ids"])}


def _record_of(req, greq, caller: str, ttl: float) -> StoredResponse:
    """The row this response will be (its body and status are filled in when it ends)."""
    now = time.time()
    return StoredResponse(greq.request_id, caller, "queued", initial_body(greq, "queued"), input_items(req.input),
                          {}, req.previous_response_id, greq.conversation or greq.request_id, bool(req.background),
                          bool(req.stream), now, now + ttl if ttl > 0 else None)


def input_items(given) -> list[dict]:
    """The request's input as items with ids (a string is one user message), as input_items lists them."""
    if isinstance(given, str):
        return [{"type": "message", "id": "msg_" + secrets.token_hex(12), "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": given}]}]
    out = []
    for item in given:
        data = item.model_dump(exclude_none=True)
        data.setdefault("type", "message")
        if data["type"] == "message" and isinstance(data.get("content"), str):
            kind = "output_text" if data.get("role") == "assistant" else "input_text"
            data["content"] = [{"type": kind, "text": data["content"]}]
        data.setdefault("id", {"message": "msg_", "reasoning": "rs_", "function_call": "fc_",
                               "function_call_output": "fco_"}.get(data["type"], "item_") + secrets.token_hex(12))
        out.append(data)
    return out


def view(body: dict, include: list[str]) -> dict:
    return {**body, "output": [view_item(i, include) for i in body.get("output") or []]}


def view_item(item: dict, include: list[str]) -> dict:
    return tool_items.public(item, include) if item.get("type") in ("code_interpreter_call", "web_search_call") \
        else item
