"""/v1/responses output: harmony output -> the `response` object, or its streaming events, over one or more steps.

Output items in order: `reasoning` (analysis channel), `message` (final channel), `function_call` (commentary to
`functions.*`), and the calls of the tools the server runs (cluster/output/tool_items.py: code_interpreter_call,
web_search_call, mcp_call, mcp_list_tools). Streaming emits the Responses event sequence (created, in_progress,
output_item.added, *.delta, *.done, the tools' progress events, completed or incomplete) with increasing
`sequence_number`. A response may take several engine steps: a step that ends with a call to a built-in tool leaves
it `pending`; the replica's tool loop (cluster/tools/loop.py) runs it (`running`, `resolve`) and starts the next step
(`next_step`: a fresh harmony parser; items, usage and sequence numbers go on). `finish()` ends with the body (or its
last event) and a `ResponseRecord`: the whole response and what the model read of each tool call, for the store.
"""

import secrets
import time
from dataclasses import dataclass, field

from cluster.output import tool_items
from cluster.output.openai import Usage, sse
from engine.outputs import RequestOutput


@dataclass
class ResponseRecord:
    """The last item of a response: what the front door stores (never sent to a client as is)."""

    body: dict  # the response object with every output field (include applies to what clients see)
    hidden: dict = field(default_factory=dict)  # output item id -> {recipient, channel, content_type, text, result}


@dataclass
class PendingCall:
    """A built-in tool call the model made (or the request ended with) that the server has to run."""

    kind: str  # "python" | "browser" | "mcp"
    recipient: str  # "python", "browser.search", "{server_label}.{tool}"
    channel: str  # the channel the model wrote the call on (the tool answers on it)
    content_type: str | None  # the call's content type as the model wrote it ("code", "json", "<|constrain|>json")
    text: str  # the code or the JSON arguments
    item: dict  # the output item (filled in when the tool answers)
    index: int  # its output index


class ResponsesFormatter:
    """Builds the `response` object; when streaming, emits the event for each change as it happens."""

    def __init__(self, req, tokenizer, model: str):
        self.req, self.model, self.tokenizer = req, model, tokenizer
        self.builtin = req.builtin or {}
        self.parser = tokenizer.stream_parser()
        self.items: list[dict] = []  # output items so far
        self.hidden: dict = {}  # item id -> what the model wrote and read (ResponseRecord.hidden)
        self.pending: PendingCall | None = None  # a built-in call waiting for its result
        self.tool_calls = 0  # built-in calls made so far (max_tool_calls)
        self._open: dict | None = None  # the item being streamed
        self._open_key: tuple | None = None  # ("reasoning"|"message", None) or ("call", tool_call_id)
        self._open_kind = "function"
        self._seq = 0
        self.usage = Usage()
        self._step_usage = (0, 0)  # prompt and cached tokens of the current step (summed over steps)
        self.finish_reason: str | None = None
        self._started = False

    # ---- feeding ----
    def feed(self, out: RequestOutput) -> list[str]:
        step = (len(out.prompt_token_ids), out.num_cached_tokens)
        self.usage.prompt_tokens += step[0] - self._step_usage[0]
        self.usage.cached_tokens += step[1] - self._step_usage[1]
        self._step_usage = step
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

    def next_step(self) -> None:
        """The tool answered: the model writes a new assistant message (the prompt ends with `<|start|>assistant`)."""
        self.parser, self.finish_reason, self._step_usage = self.tokenizer.stream_parser(), None, (0, 0)

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
            return frames + self._call_delta(item, index, d.text)
        part = item["content"][0]
        part["text"] += d.text
        kind = "reasoning_text" if key[0] == "reasoning" else "output_text"
        return frames + [self._event(f"response.{kind}.delta", item_id=item["id"], output_index=index,
                                     content_index=0, delta=d.text)]

    def _call_delta(self, item: dict, index: int, text: str) -> list[str]:
        if self._open_kind == "function":
            item["arguments"] += text
            return [self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                delta=text)]
        self._call_text += text
        event = tool_items.delta_event(item, text)
        return [self._item_event(event, item, index)] if event else []

    def _open_item(self, key: tuple, d) -> list[str]:
        index = len(self.items)
        if key[0] == "call":
            self._open_kind = tool_items.kind_of(d.recipient, self.builtin)
            if self._open_kind != "function":
                return self._open_call(tool_items.new_item(self._open_kind, d.recipient, None, self._container()),
                                       key, d.recipient, d.channel)
            item = {"type": "function_call", "id": "fc_" + secrets.token_hex(12), "call_id": d.tool_call_id,
                    "name": d.recipient.removeprefix("functions."), "arguments": "", "status": "in_progress"}
        elif key[0] == "reasoning":
            item = {"type": "reasoning", "id": "rs_" + secrets.token_hex(12), "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}
        else:
            item = {"type": "message", "id": "msg_" + secrets.token_hex(12), "role": "assistant",
                    "status": "in_progress", "content": [{"type": "output_text", "text": "", "annotations": []}]}
        self._open, self._open_key = item, key
        frames = [self._event("response.output_item.added", output_index=index, item=_in_progress(item))]
        if item["type"] != "function_call":
            empty = {**item["content"][0], "text": ""}
            frames.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=empty))
        return frames

    def _open_call(self, item: dict, key, recipient: str, channel: str | None) -> list[str]:
        self._open, self._open_key, self._call_text = item, key, ""
        self._call_header = (recipient, channel or "analysis")
        if item["type"] == "web_search_call":  # announced once its arguments (the action) are whole
            return []
        index = len(self.items)
        return [self._event("response.output_item.added", output_index=index, item=self._public(item))] + \
            [self._item_event(e, item, index) for e in tool_items.opened_events(item)]

    def _close(self) -> list[str]:
        item, index = self._open, len(self.items)
        if item is None:
            return []
        self._open = self._open_key = None
        if item["type"] in ("code_interpreter_call", "web_search_call", "mcp_call"):
            return self._close_call(item, index)
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

    def _close_call(self, item: dict, index: int) -> list[str]:
        """The model's call is whole: it waits for the tool (`pending`)."""
        recipient, channel = self._call_header
        message = self.parser.messages[-1] if self.parser.messages else None
        content_type = message.content_type if message is not None and message.recipient == recipient else None
        return self._pend(PendingCall(self._open_kind, recipient, channel, content_type, self._call_text, item,
                                      index))

    def _pend(self, call: PendingCall) -> list[str]:
        self.items.append(call.item)
        self.pending = call
        frames = []
        if call.item["type"] == "web_search_call":
            call.item["action"] = tool_items.browser_action(call.recipient, call.text)
            frames = [self._event("response.output_item.added", output_index=call.index,
                                  item=self._public(call.item))] + \
                [self._item_event(e, call.item, call.index) for e in tool_items.opened_events(call.item)]
        return frames + [self._item_event(e, call.item, call.index)
                         for e in tool_items.closed_events(call.item, call.text)]

    # ---- the tool loop's side ----
    def open_call(self, call: dict) -> list[str]:
        """The request ended with a built-in call (a `builtin_call` message): it becomes this response's pending
        item, with the client's id, as if the model had just written it."""
        frames = [] if self._started else self._start()
        kind = tool_items.kind_of(call["recipient"], self.builtin)
        item = tool_items.new_item(kind, call["recipient"], call.get("item_id"), self._container())
        self._open_kind, self._call_text, self._call_header = kind, "", (call["recipient"], call["channel"])
        frames += self._open_call(item, ("call", item["id"]), call["recipient"], call["channel"])
        frames += self._call_delta(item, len(self.items), call["text"])
        self._open = self._open_key = None
        pending = PendingCall(kind, call["recipient"], call["channel"], call.get("content_type"), call["text"], item,
                              len(self.items))
        frames += self._pend(pending)
        return frames if self.req.stream else []

    def running(self) -> list[str]:
        call = self.pending
        frames = [self._item_event(e, call.item, call.index) for e in tool_items.running_events(call.item)]
        return frames if self.req.stream else []

    def resolve(self, result) -> list[str]:
        """The pending call's result (a cluster.tools.ToolResult): the item is done, the model reads `result.text`."""
        call, self.pending = self.pending, None
        self.tool_calls += 1
        frames = [self._item_event(e, call.item, call.index) for e in tool_items.resolve(call.item, result)]
        self.hidden[call.item["id"]] = {"recipient": call.recipient, "channel": call.channel,
                                        "content_type": call.content_type, "text": call.text, "result": result.text}
        frames.append(self._event("response.output_item.done", output_index=call.index, item=self._public(call.item)))
        return frames if self.req.stream else []

    def listed(self, server: dict, tools: list[dict] | None, error: str | None) -> list[str]:
        """An MCP server's tools were listed (or could not be): an mcp_list_tools item."""
        frames = [] if self._started else self._start()
        item, index = tool_items.listing_item(server, tools, error), len(self.items)
        self.items.append(item)
        done = "failed" if error else "completed"
        frames += [self._event("response.output_item.added", output_index=index, item={**item, "tools": []}),
                   self._event("response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index),
                   self._event(f"response.mcp_list_tools.{done}", item_id=item["id"], output_index=index),
                   self._event("response.output_item.done", output_index=index, item=item)]
        return frames if self.req.stream else []

    # ---- events ----
    def _item_event(self, event: tuple[str, dict], item: dict, index: int) -> str:
        kind, payload = event
        return self._event(kind, item_id=item["id"], output_index=index, **payload)

    def _event(self, kind: str, **payload) -> str:
        self._seq += 1
        return sse({"type": kind, "sequence_number": self._seq - 1, **payload}, event=kind)

    def _public(self, item: dict) -> dict:
        return tool_items.public(item, self.req.include)

    def _container(self) -> str:
        return "cntr_" + (self.req.conversation or self.req.request_id).removeprefix("resp_")

    # ---- the response object ----
    def body(self, status: str, public: bool = True) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        u = self.usage
        output = [self._public(i) for i in self.items] if public else [dict(i) for i in self.items]
        return {
            "id": self.req.request_id, "object": "response", "created_at": self.req.created or int(time.time()),
            "status": status, "model": self.model, "output": output, "error": None,
            "incomplete_details": incomplete, **self.req.echo,
            "reasoning": {"effort": self.req.reasoning_effort, "summary": None},
            "usage": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
                      "total_tokens": u.prompt_tokens + u.completion_tokens,
                      "input_tokens_details": {"cached_tokens": u.cached_tokens},
                      "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens}},
        }

    def finish(self, status: str | None = None) -> list:
        status = status or ("incomplete" if self.finish_reason == "length" else "completed")
        if self.pending is not None:  # cut short before the tool could run
            self.pending.item["status"], self.pending = "incomplete", None
        record = ResponseRecord(self.body(status, public=False), self.hidden)
        body = self.body(status)
        if not self.req.stream:
            return [body, record]
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [record, self._event(kind, response=body)]  # stored before the client hears it ended


def _in_progress(item: dict) -> dict:
    if item["type"] == "function_call":
        return {**item, "arguments": ""}
    return {**item, "content": []}
