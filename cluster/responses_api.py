"""/v1/responses, stateless: input items -> chat messages, and harmony output -> output items or streaming events.

Nothing is stored: `previous_response_id` is refused and `store` is reported false; a multi-turn conversation
sends its earlier items (messages, reasoning, function_call, function_call_output) again as input.
Output items in order: `reasoning` (analysis channel), `message` (final channel), `function_call` (commentary to
`functions.*`). Streaming emits the Responses event sequence (created, output_item.added, *.delta, *.done,
completed) with increasing `sequence_number`.
"""

import json
import secrets
import time

from cluster.errors import bad_request
from cluster.openai_output import Usage, sse
from engine.outputs import RequestOutput

_ROLES = ("user", "system", "developer", "assistant")


def input_to_messages(items, instructions: str | None) -> list[dict]:
    """Responses `input` (a string or items) and `instructions` -> OpenAI chat messages."""
    messages = [{"role": "developer", "content": instructions}] if instructions else []
    if isinstance(items, str):
        if not items:
            raise bad_request("input must be a non-empty string or list of items", "input")
        return messages + [{"role": "user", "content": items}]
    if not items:
        raise bad_request("input must be a non-empty string or list of items", "input")
    for i, item in enumerate(items):
        messages += _item(f"input[{i}]", item, messages)
    return messages


def _item(where: str, item: dict, earlier: list[dict]) -> list[dict]:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise bad_request(f"{where}.role must be one of {list(_ROLES)}, got {role!r}", f"{where}.role")
        return [{"role": role, "content": _content(f"{where}.content", item.get("content"))}]
    if kind == "reasoning":
        parts = item.get("content") or item.get("summary") or []
        text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
        return [{"role": "assistant", "reasoning_content": text, "content": None}] if text else []
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise bad_request(f"{where}.{key} must be a string", f"{where}.{key}")
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise bad_request(f"{where}.call_id must be a string", f"{where}.call_id")
        output = item.get("output")
        return [{"role": "tool", "tool_call_id": item["call_id"],
                 "content": output if isinstance(output, str) else json.dumps(output)}]
    raise bad_request(f"{where}.type {kind!r} is not supported (message, reasoning, function_call, "
                      "function_call_output)", f"{where}.type")


def _content(where: str, content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{j}] must be {{'type': 'input_text', 'text': str}} (only text is supported)",
                              f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


class ResponsesFormatter:
    """Builds the `response` object; when streaming, emits the event for each change as it happens."""

    def __init__(self, req, tokenizer, model: str):
        self.req, self.model = req, model
        self.parser = tokenizer.stream_parser()
        self.items: list[dict] = []  # output items so far
        self._open: dict | None = None  # the item being streamed
        self._open_key: tuple | None = None  # ("reasoning"|"message", None) or ("call", tool_call_id)
        self._seq = 0
        self.usage = Usage()
        self.finish_reason: str | None = None
        self._started = False

    # ---- feeding ----
    def feed(self, out: RequestOutput) -> list[str]:
        self.usage.prompt_tokens, self.usage.cached_tokens = len(out.prompt_token_ids), out.num_cached_tokens
        frames = [] if self._started else self._start()
        sample = out.outputs[0]
        for token in sample.token_ids:
            deltas = self.parser.feed(int(token))
            self.usage.reasoning_tokens += any(d.channel == "analysis" and d.recipient is None for d in deltas)
            for d in deltas:
                frames += self._delta(d)
        self.usage.completion_tokens += len(sample.token_ids)
        if sample.finish_reason is not None:
            for d in self.parser.finish():
                frames += self._delta(d)
            frames += self._close()
            self.finish_reason = sample.finish_reason
        return frames if self.req.stream else []

    def _start(self) -> list[str]:
        self._started = True
        body = self.body("in_progress")
        return [self._event("response.created", response=body), self._event("response.in_progress", response=body)]

    def _delta(self, d) -> list[str]:
        key = ("call", d.tool_call_id) if d.recipient else ("reasoning" if d.channel == "analysis" else "message",
                                                            None)
        frames = [] if key == self._open_key else self._close() + self._open_item(key, d)
        if d.completed_tool_call is not None:
            return frames + self._close()
        if not d.text:
            return frames
        item, index = self._open, len(self.items)
        if key[0] == "call":
            item["arguments"] += d.text
            return frames + [self._event("response.function_call_arguments.delta", item_id=item["id"],
                                         output_index=index, delta=d.text)]
        part = item["content"][0]
        part["text"] += d.text
        kind = "reasoning_text" if key[0] == "reasoning" else "output_text"
        return frames + [self._event(f"response.{kind}.delta", item_id=item["id"], output_index=index,
                                     content_index=0, delta=d.text)]

    def _open_item(self, key: tuple, d) -> list[str]:
        if key[0] == "call":
            item = {"type": "function_call", "id": "fc_" + secrets.token_hex(12), "call_id": d.tool_call_id,
                    "name": d.recipient.removeprefix("functions."), "arguments": "", "status": "in_progress"}
        elif key[0] == "reasoning":
            item = {"type": "reasoning", "id": "rs_" + secrets.token_hex(12), "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}
        else:
            item = {"type": "message", "id": "msg_" + secrets.token_hex(12), "role": "assistant",
                    "status": "in_progress", "content": [{"type": "output_text", "text": "", "annotations": []}]}
        self._open, self._open_key = item, key
        index = len(self.items)
        frames = [self._event("response.output_item.added", output_index=index, item=_in_progress(item))]
        if item["type"] != "function_call":
            empty = {**item["content"][0], "text": ""}
            frames.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=empty))
        return frames

    def _close(self) -> list[str]:
        item, index = self._open, len(self.items)
        if item is None:
            return []
        self._open = self._open_key = None
        item["status"] = "completed"
        self.items.append(item)
        if item["type"] == "function_call":
            done = [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                arguments=item["arguments"])]
        else:
            part = item["content"][0]
            kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
            done = [self._event(f"response.{kind}.done", item_id=item["id"], output_index=index, content_index=0,
                                text=part["text"]),
                    self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=part)]
        return done + [self._event("response.output_item.done", output_index=index, item=item)]

    def _event(self, kind: str, **payload) -> str:
        self._seq += 1
        return sse({"type": kind, "sequence_number": self._seq - 1, **payload}, event=kind)

    # ---- the response object ----
    def body(self, status: str) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        u = self.usage
        return {
            "id": self.req.request_id, "object": "response", "created_at": self.req.created or int(time.time()),
            "status": status, "model": self.model, "output": list(self.items), "error": None,
            "incomplete_details": incomplete, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": self.req.sampling.get("temperature"), "top_p": self.req.sampling.get("top_p"),
            "tool_choice": "auto", "tools": [], "store": False, "text": {"format": {"type": "text"}},
            "reasoning": {"effort": self.req.reasoning_effort, "summary": None},
            "usage": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
                      "total_tokens": u.prompt_tokens + u.completion_tokens,
                      "input_tokens_details": {"cached_tokens": u.cached_tokens},
                      "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens}},
        }

    def finish(self) -> list:
        status = "incomplete" if self.finish_reason == "length" else "completed"
        body = self.body(status)
        if not self.req.stream:
            return [body]
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [self._event(kind, response=body)]


def _in_progress(item: dict) -> dict:
    if item["type"] == "function_call":
        return {**item, "arguments": ""}
    return {**item, "content": []}
