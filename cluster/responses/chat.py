"""A gRPC Chat over stored responses: a stored conversation continued by id, and the chat kept as a response.

Flow: `ChatTurn.prepare(req, previous_response_id, store, caller)` -> the caller's chain (the same store, the same
404 and 400 as /v1/responses) goes between the request's leading instructions and its other messages, and the
conversation id comes along -> the call streams as any Chat -> `observe(item)` collects sample 0's channel parts
-> at the end (`finish`) they become Responses output items (reasoning, message, function_call) and the chat is
stored as a response whose input items are the request's own messages, so /v1/responses and Chat can go on from
either. Nothing of this runs for a Chat that neither names a previous response nor is stored.
"""

import secrets
import time

from cluster.errors import bad_request
from cluster.output.deltas import SampleDelta, StreamEnd
from cluster.responses.chain import chain_messages
from cluster.responses.runs import initial_body
from cluster.responses.service import not_found
from cluster.responses.store import FOLLOWABLE, StoredResponse


class ChatTurn:
    def __init__(self, service):
        self.service = service
        self.store = False
        self.parts: list[tuple[str, str | None, str | None, str]] = []  # (kind, key, name, text) in order
        self.req = self.caller = self.previous = self.finish_reason = None
        self.own: list[dict] = []

    async def prepare(self, req, previous_response_id: str, store: bool, caller: str) -> None:
        self.req, self.caller, self.previous = req, caller, previous_response_id or None
        self.own = list(req.messages)  # the request's own messages (its input items when stored)
        if not self.service.settings.allow_store:
            field = "store" if store else "previous_response_id"
            raise bad_request(f"{field}: storing responses is turned off on this server", field,
                              "unsupported_parameter")
        self.store = store
        if self.store and req.sampling.get("n", 1) != 1:
            raise bad_request("store needs sampling.n of 1 (a stored response has one output)", "store")
        if self.previous:
            chain = await (await self.service.store()).chain(self.previous, caller)
            if chain is None:
                raise not_found(self.previous, "previous_response_id")
            if chain[-1].status not in FOLLOWABLE:
                raise bad_request(f"previous_response_id {self.previous!r} is {chain[-1].status}",
                                  "previous_response_id")
            lead = _leading(req.messages)
            req.messages = req.messages[:lead] + chain_messages(chain) + req.messages[lead:]
            req.conversation = chain[0].conversation
        if self.store:
            await self.service._check_quota(caller)
            req.request_id = "resp_" + secrets.token_hex(16)

    def observe(self, item) -> None:
        if not isinstance(item, SampleDelta) or item.index != 0:
            return
        for p in item.parts:
            kind = "call" if p.recipient else "reasoning" if p.channel == "analysis" else "message"
            key = p.tool_call_id if p.recipient else None
            last = self.parts[-1] if self.parts else None
            if last is not None and last[0] == kind and last[1] == key:
                self.parts[-1] = (kind, key, last[2], last[3] + p.text)
            else:
                self.parts.append((kind, key, p.recipient, p.text))
        self.finish_reason = item.finish_reason or self.finish_reason

    async def finish(self, end: StreamEnd) -> str | None:
        """Stores the chat (when asked); its response id."""
        if not self.store:
            return None
        req, u = self.req, end.usage
        req.echo = _echo(req, self.own, self.previous)
        body = initial_body(req, "incomplete" if self.finish_reason == "length" else "completed")
        body.update({"output": self._items(), "previous_response_id": self.previous, "store": True,
                     "usage": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
                               "total_tokens": u.prompt_tokens + u.completion_tokens,
                               "input_tokens_details": {"cached_tokens": u.cached_tokens},
                               "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}})
        if body["status"] == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        now, ttl = time.time(), self.service.settings.store_ttl
        record = StoredResponse(req.request_id, self.caller, body["status"], body,
                                chat_items(self.own[_leading(self.own):]), {}, self.previous,
                                req.conversation or req.request_id, created_at=now,
                                expires_at=now + ttl if ttl > 0 else None)
        await (await self.service.store()).insert(record)
        return req.request_id

    def _items(self) -> list[dict]:
        out = []
        for kind, key, recipient, text in self.parts:
            if kind == "reasoning":
                out.append({"type": "reasoning", "id": "rs_" + secrets.token_hex(12), "summary": [],
                            "content": [{"type": "reasoning_text", "text": text}], "status": "completed"})
            elif kind == "message":
                out.append({"type": "message", "id": "msg_" + secrets.token_hex(12), "role": "assistant",
                            "status": "completed", "content": [{"type": "output_text", "text": text,
                                                                "annotations": []}]})
            else:
                out.append({"type": "function_call", "id": "fc_" + secrets.token_hex(12), "call_id": key,
                            "name": recipient.removeprefix("functions."), "arguments": text, "status": "completed"})
        return out


def _echo(req, own: list[dict], previous: str | None) -> dict:
    """What the stored response object repeats of a Chat (the Responses fields a Chat has, OpenAI's defaults else)."""
    lead = "\n\n".join(m.get("content") or "" for m in own[:_leading(own)]) or None
    tools = [{"type": "function", **{k: v for k, v in t["function"].items() if v is not None}}
             for t in req.tools or []]
    return {"instructions": lead, "max_output_tokens": req.sampling.get("max_tokens"), "max_tool_calls": None,
            "metadata": {}, "parallel_tool_calls": True, "temperature": float(req.sampling.get("temperature", 1.0)),
            "top_p": float(req.sampling.get("top_p", 1.0)), "tool_choice": "auto", "tools": tools,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "truncation": "disabled", "user": None,
            "safety_identifier": None, "prompt_cache_key": None, "service_tier": "default", "store": True,
            "background": False, "previous_response_id": previous}


def _leading(messages: list[dict]) -> int:
    return next((i for i, m in enumerate(messages) if m["role"] not in ("system", "developer")), len(messages))


def chat_items(messages: list[dict]) -> list[dict]:
    """Chat messages as Responses input items (what input_items lists and a chain renders)."""
    items = []
    for m in messages:
        new = lambda prefix: prefix + secrets.token_hex(12)  # noqa: E731
        if m["role"] == "tool":
            items.append({"type": "function_call_output", "id": new("fco_"), "call_id": m.get("tool_call_id", ""),
                          "output": m.get("content") or ""})
        elif m["role"] != "assistant":
            items.append({"type": "message", "id": new("msg_"), "role": m["role"],
                          "content": [{"type": "input_text", "text": m.get("content") or ""}]})
        else:
            if m.get("reasoning"):
                items.append({"type": "reasoning", "id": new("rs_"), "summary": [],
                              "content": [{"type": "reasoning_text", "text": m["reasoning"]}]})
            if m.get("content"):
                items.append({"type": "message", "id": new("msg_"), "role": "assistant",
                              "content": [{"type": "output_text", "text": m["content"]}]})
            for call in m.get("tool_calls") or []:
                items.append({"type": "function_call", "id": new("fc_"), "call_id": call["id"],
                              "name": call["function"]["name"], "arguments": call["function"]["arguments"]})
    return items
