"""gptoss.v1 messages <-> the cluster's own objects: requests in (validated, errors naming the proto field), deltas out.

Flow in: a `GenerateRequest` / `ChatRequest` / `TokenizeRequest` message -> `to_generate` / `to_chat` /
`to_tokenize` check what needs no model (prompt set, roles, tool JSON, every sampling option through
`engine.SamplingParams`) and build a `cluster.protocol.GenerateRequest` with `output="deltas"` and `renames` that
map engine field names to proto paths (so a replica's 400 names `sampling.max_tokens`, not `max_tokens`); a
problem raises `ApiError(400)` naming the field. Flow out: `GenerateOutput` / `ChatOutput` turn the replica's
`SampleDelta`s and `StreamEnd` (cluster/output/deltas.py) into `GenerateResponse` / `ChatResponse` messages.
"""

import json
import re
import secrets
import time

from cluster.errors import ApiError, bad_request, from_value_error
from cluster.output.deltas import SampleDelta, StreamEnd
from cluster.output.openai import Usage
from cluster.protocol import GenerateRequest
from cluster.protocol.common import json_schema_of
from engine.sampling_params import SamplingParams

OPTIONAL_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                     "frequency_penalty", "repetition_penalty", "logprobs", "n", "min_tokens")
SAMPLING_RENAMES = {name: f"sampling.{name}" for name in
                    OPTIONAL_SAMPLING + ("stop", "stop_token_ids", "ignore_eos", "logit_bias")}
ROLES = {1: "system", 2: "developer", 3: "user", 4: "assistant", 5: "tool"}
EFFORTS = {0: None, 1: "low", 2: "medium", 3: "high"}
CHANNELS = {None: 0, "analysis": 1, "commentary": 2, "final": 3}
FINISH = {None: 0, "stop": 1, "length": 2, "abort": 3, "tool_calls": 4}
# engine/harmony field paths -> proto field paths (tools[0].function.name -> tools[0].name)
_PROTO_PATHS = ((re.compile(r"\.function\.parameters"), ".parameters_json"), (re.compile(r"\.function\."), "."))


def proto_path(text: str | None) -> str | None:
    if text is None:
        return None
    for pattern, repl in _PROTO_PATHS:
        text = pattern.sub(repl, text)
    return text


# -- requests in -------------------------------------------------------------------------------------------------


def sampling(msg, has_field: bool) -> dict:
    """SamplingParams keyword arguments of the set fields; every check that needs no model runs here."""
    out: dict = {}
    if not has_field:
        return out
    for name in OPTIONAL_SAMPLING:
        if msg.HasField(name):
            out[name] = getattr(msg, name)
    for name in ("stop", "stop_token_ids"):
        if getattr(msg, name):
            out[name] = list(getattr(msg, name))
    if msg.ignore_eos:
        out["ignore_eos"] = True
    if msg.logit_bias:
        out["logit_bias"] = dict(msg.logit_bias)
    try:
        SamplingParams(**{"max_tokens": max(1, out.get("min_tokens", 1)), **out})
    except ValueError as err:
        raise from_value_error(err, SAMPLING_RENAMES) from None
    return out


def _base(msg, kind: str, prefix: str, sampling_dict: dict, renames: dict, **fields) -> GenerateRequest:
    if not msg.model:
        raise bad_request("model must be set (ListModels lists the names)", "model")
    return GenerateRequest(kind, msg.model, prefix + secrets.token_hex(12), sampling_dict, True, output="deltas",
                           renames={**SAMPLING_RENAMES, **renames}, created=int(time.time()), **fields)


def to_generate(msg) -> GenerateRequest:
    if bool(msg.prompt) == bool(msg.prompt_token_ids):
        raise bad_request("exactly one of prompt and prompt_token_ids must be set", "prompt")
    prompt = msg.prompt or list(msg.prompt_token_ids)
    field = "prompt" if msg.prompt else "prompt_token_ids"
    return _base(msg, "completion", "gen-", sampling(msg.sampling, msg.HasField("sampling")),
                 {"prompt": field, "prompt_token_ids": field}, prompt=prompt, parse_harmony=msg.parse_harmony)


def to_chat(msg) -> GenerateRequest:
    messages, tools = chat_messages(msg.messages, "messages"), chat_tools(msg.tools, "tools")
    return _base(msg, "chat", "chat-", sampling(msg.sampling, msg.HasField("sampling")), {"prompt": "messages"},
                 messages=messages, tools=tools, reasoning_effort=_effort(msg.reasoning_effort))


def to_tokenize(msg) -> GenerateRequest:
    """A TokenizeRequest as the GenerateRequest whose prompt it asks about (for LLMServer.tokenize)."""
    if bool(msg.text) == msg.HasField("chat"):
        raise bad_request("exactly one of text and chat must be set", "text")
    if msg.text:
        return _base(msg, "completion", "tok-", {}, {}, prompt=msg.text)
    chat = msg.chat
    return _base(msg, "chat", "tok-", {}, {"prompt": "chat.messages"},
                 messages=chat_messages(chat.messages, "chat.messages"), tools=chat_tools(chat.tools, "chat.tools"),
                 reasoning_effort=_effort(chat.reasoning_effort))


def _effort(value: int) -> str | None:
    if value not in EFFORTS:
        raise bad_request(f"reasoning_effort must be one of LOW, MEDIUM, HIGH or unset, got {value}",
                          "reasoning_effort")
    return EFFORTS[value]


def chat_messages(messages, path: str) -> list[dict]:
    if not messages:
        raise bad_request(f"{path} must hold at least one message", path)
    out = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise bad_request(f"{path}[{i}].role must be one of SYSTEM, DEVELOPER, USER, ASSISTANT, TOOL, got "
                              f"{m.role}", f"{path}[{i}].role")
        d = {"role": role, "content": m.content}
        if m.reasoning:
            d["reasoning"] = m.reasoning
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
        out.append(d)
    return out


def chat_tools(tools, path: str) -> list[dict] | None:
    out = []
    for i, t in enumerate(tools):
        fn = {"name": t.name, "description": t.description}
        if t.parameters_json:
            try:
                fn["parameters"] = json.loads(t.parameters_json)
            except ValueError as err:
                raise bad_request(f"{path}[{i}].parameters_json is not valid JSON: {err}",
                                  f"{path}[{i}].parameters_json") from None
            json_schema_of(fn["parameters"], f"{path}[{i}].parameters_json")
        out.append({"type": "function", "function": fn})
    return out or None


# -- deltas out -----------------------------------------------------------------------------------------------------


def _logprobs(pb, delta: SampleDelta, top_n: int) -> list:
    if not delta.logprobs:
        return []
    out = []
    for token, lp in zip(delta.token_ids, delta.logprobs):
        top = sorted(lp.items(), key=lambda kv: -kv[1])[:top_n]
        out.append(pb.TokenLogprob(token_id=token, logprob=lp.get(token, 0.0),
                                   top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in top]))
    return out


def _usage(pb, usage: Usage):
    return pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cached_tokens, reasoning_tokens=usage.reasoning_tokens)


class GenerateOutput:
    """Replica items -> GenerateResponse messages for one call."""

    def __init__(self, pb, req: GenerateRequest):
        self.pb, self.top_n = pb, req.sampling.get("logprobs") or 0

    def message(self, item):
        pb = self.pb
        if isinstance(item, StreamEnd):
            return pb.GenerateResponse(usage=_usage(pb, item.usage))
        parts = [pb.ChannelText(channel=CHANNELS.get(p.channel, 0), text=p.text, recipient=p.recipient or "")
                 for p in item.parts if p.text]
        return pb.GenerateResponse(index=item.index, token_ids=item.token_ids, text=item.text, channel_text=parts,
                                   logprobs=_logprobs(pb, item, self.top_n),
                                   finish_reason=FINISH.get(item.finish_reason, 0))


class ChatOutput:
    """Replica items -> ChatResponse messages for one call (a tool call's name goes with its first delta)."""

    def __init__(self, pb, req: GenerateRequest):
        self.pb, self.top_n = pb, req.sampling.get("logprobs") or 0
        self.named: set[str] = set()

    def message(self, item):
        pb = self.pb
        if isinstance(item, StreamEnd):
            return pb.ChatResponse(usage=_usage(pb, item.usage))
        content, calls = [], []
        for p in item.parts:
            if p.recipient is None:
                content.append(pb.ChannelText(channel=CHANNELS.get(p.channel, 0), text=p.text))
                continue
            name = "" if p.tool_call_id in self.named else p.recipient.removeprefix("functions.")
            self.named.add(p.tool_call_id)
            calls.append(pb.ToolCallDelta(id=p.tool_call_id, name=name, arguments=p.text, complete=p.complete))
        return pb.ChatResponse(index=item.index, content=content, tool_calls=calls, token_ids=item.token_ids,
                               logprobs=_logprobs(pb, item, self.top_n),
                               finish_reason=FINISH.get(item.finish_reason, 0))


def error_text(err: ApiError) -> str:
    """The status details: the message with proto field paths, led by the field when the message does not say it."""
    message, param = proto_path(err.message), proto_path(err.param)
    return message if not param or message.startswith(param) else f"{param}: {message}"
