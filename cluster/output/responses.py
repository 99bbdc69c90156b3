"""/v1/responses output: harmony output -> the `response` object, or its streaming events.

Output items in order: `reasoning` (analysis channel), `message` (final channel), `function_call` (commentary to
`functions.*`). Streaming emits the Responses event sequence (created, in_progress, output_item.added, *.delta,
*.done, completed or incomplete) with increasing `sequence_number`.
"""

import secrets
import time

from cluster.output.openai import Usage, sse
from engine.outputs import RequestOutput


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
            "incomplete_details": incomplete, **self.req.echo,
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
