"""OpenAI request parsing: JSON body -> validated `GenerateRequest`, the one object the ingress hands a replica.

Flow: bytes -> JSON (400 on invalid JSON) -> pydantic model of the endpoint (400 naming the field) -> sampling
options checked by constructing `engine.SamplingParams` (400 naming the field) -> `GenerateRequest`. The checks
that need the model (tool schemas rendered by harmony, prompt length vs the context) run in the replica
(`cluster.server`) and come back as the same 400s. Unknown fields are ignored, as OpenAI-compatible servers do.
"""

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.errors import ApiError, bad_request, from_value_error
from engine.sampling_params import SamplingParams

Kind = Literal["chat", "completion", "response"]


@dataclass
class GenerateRequest:
    """A validated request, as the ingress sends it to a replica (and the router reads it)."""

    kind: Kind
    model: str
    request_id: str  # also the engine request id: "chatcmpl-...", "cmpl-..." or "resp_..."
    sampling: dict  # SamplingParams keyword arguments (checked without the model); max_tokens may be absent
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a final chunk with usage
    prompt: str | list[int] | None = None  # completions
    messages: list[dict] | None = None  # chat (responses input converted to chat messages)
    tools: list[dict] | None = None  # chat-style function tools actually offered (tool_choice applied)
    reasoning_effort: str | None = None  # None: the model's default
    renames: dict[str, str] = field(default_factory=dict)  # engine field -> request field, for error params
    prefix_hashes: list[int] = field(default_factory=list)  # chained hashes of prompt chunks (for routing)
    created: int = 0  # unix seconds
    received: float | None = None  # unix time the front door received it (TTFT and queue time count from here)
    deadline: float | None = None  # unix time: past it the replica aborts the engine request and yields a 408
    output: Literal["openai", "deltas"] = "openai"  # deltas: plain token/channel deltas for the gRPC gateway
    parse_harmony: bool = False  # completion kind: the prompt is harmony; stop at the turn's end, parse channels
    avoid_replicas: list[str] = field(default_factory=list)  # replica ids the router ranks last (a retry)
    routed_replica: str | None = None  # set in the caller's process by the router: where the request went


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Model):
    include_usage: bool = False


class _Sampling(_Model):
    model: str
    temperature: float | None = Field(None)
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = None  # extension (as vLLM's): generate past the end of the turn up to max_tokens
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = None
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


class ResponsesRequest(_Model):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    previous_response_id: str | None = None
    store: bool | None = None
    text: dict[str, Any] | None = None


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"The request body is not valid JSON: {err}", "body", "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object", "body")
    return data


def validate(model_cls: type[_Model], data: dict) -> _Model:
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise bad_request(f"{param}: {first['msg']}" if param else first["msg"], param) from None


# -- per endpoint ------------------------------------------------------------------------------------------------------


def parse_chat(data: dict, created: int) -> GenerateRequest:
    req = validate(ChatRequest, data)
    if not req.messages:
        raise bad_request("messages must be a non-empty list of chat messages", "messages")
    if req.response_format is not None and req.response_format.get("type", "text") != "text":
        raise bad_request("response_format types other than 'text' are not supported yet", "response_format")
    if req.logprobs or req.top_logprobs:
        raise bad_request("logprobs are not supported for chat completions yet; use /v1/completions", "logprobs")
    max_tokens, max_name = _first(req, "max_completion_tokens", "max_tokens")
    sampling = _sampling(req, max_tokens, max_name)
    tools = apply_tool_choice(req.tools, req.tool_choice)
    return GenerateRequest("chat", req.model, "chatcmpl-" + secrets.token_hex(12), sampling, req.stream,
                           _usage(req), messages=req.messages, tools=tools, reasoning_effort=req.reasoning_effort,
                           renames={"max_tokens": max_name, "prompt": "messages"}, created=created)


def parse_completion(data: dict, created: int) -> GenerateRequest:
    req = validate(CompletionRequest, data)
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise bad_request("a list of several prompts is not supported; send one request per prompt", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise bad_request("prompt must be a non-empty string or list of token ids", "prompt")
    if req.echo or req.suffix:
        raise bad_request("echo and suffix are not supported", "echo" if req.echo else "suffix")
    max_tokens = req.max_tokens if req.max_tokens is not None else 16  # OpenAI's completions default
    sampling = _sampling(req, max_tokens, "max_tokens")
    if req.logprobs is not None:
        sampling["logprobs"] = req.logprobs
        _check_sampling(sampling, {})
    return GenerateRequest("completion", req.model, "cmpl-" + secrets.token_hex(12), sampling, req.stream,
                           _usage(req), prompt=prompt, renames={"prompt_token_ids": "prompt"}, created=created)


def parse_responses(data: dict, created: int) -> GenerateRequest:
    from cluster.responses_api import input_to_messages  # noqa: PLC0415 - the Responses API lives there

    req = validate(ResponsesRequest, data)
    if req.previous_response_id is not None:
        raise bad_request("previous_response_id is not supported: this server is stateless; send the whole "
                          "conversation as input items", "previous_response_id")
    fmt = (req.text or {}).get("format") or {}
    if fmt.get("type", "text") != "text":
        raise bad_request("text.format types other than 'text' are not supported yet", "text.format")
    messages = input_to_messages(req.input, req.instructions)
    effort = (req.reasoning or {}).get("effort")
    tools = apply_tool_choice(_responses_tools(req.tools), req.tool_choice)
    sampling = {k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p)) if v is not None}
    if req.max_output_tokens is not None:
        sampling["max_tokens"] = req.max_output_tokens
    _check_sampling(sampling, {"max_tokens": "max_output_tokens"})
    return GenerateRequest("response", req.model, "resp_" + secrets.token_hex(16), sampling, req.stream, False,
                           messages=messages, tools=tools, reasoning_effort=effort,
                           renames={"max_tokens": "max_output_tokens", "prompt": "input"}, created=created)


# -- helpers -------------------------------------------------------------------------------------------------------


def _first(req, *names) -> tuple[int | None, str]:
    for name in names:
        if getattr(req, name) is not None:
            return getattr(req, name), name
    return None, names[-1]


def _usage(req) -> bool:
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    return bool(req.stream_options and req.stream_options.include_usage)


_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "n", "seed", "stop", "presence_penalty",
                    "frequency_penalty", "repetition_penalty", "ignore_eos")


def _sampling(req, max_tokens: int | None, max_name: str) -> dict:
    sampling = {k: getattr(req, k) for k in _SAMPLING_FIELDS if getattr(req, k) is not None}
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
    if req.logit_bias:
        try:
            sampling["logit_bias"] = {int(k): v for k, v in req.logit_bias.items()}
        except ValueError:
            raise bad_request("logit_bias keys must be token ids (integers as strings)", "logit_bias") from None
    _check_sampling(sampling, {"max_tokens": max_name})
    return sampling


def _check_sampling(sampling: dict, renames: dict) -> None:
    """Every check SamplingParams can make without the model; the error names the request's field."""
    try:
        SamplingParams(**{"max_tokens": 1, **sampling})
    except ValueError as err:
        raise from_value_error(err, renames) from None


def apply_tool_choice(tools: list[dict] | None, choice) -> list[dict] | None:
    """The tools the prompt offers: none for "none", the named one for a named choice, else all.

    "required" and a named choice are honoured by what the prompt offers, not enforced by constrained decoding.
    """
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools must be a list of function tools", "tools")
    if choice is None or choice in ("auto", "required"):
        if choice == "required" and not tools:
            raise bad_request("tool_choice 'required' needs at least one tool in tools", "tool_choice")
        return tools or None
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        chosen = [t for t in tools or [] if isinstance(t, dict) and (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise bad_request(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
        return chosen
    raise bad_request(f"tool_choice must be 'none', 'auto', 'required' or a named function, got {choice!r}",
                      "tool_choice")


def _responses_tools(tools: list[dict] | None) -> list[dict] | None:
    """Responses API tools ({"type": "function", "name", "parameters"}) -> chat-style tools."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise bad_request(f"tools[{i}].type must be 'function' (built-in tools are not supported), got "
                              f"{tool.get('type')!r}", f"tools[{i}].type")
        fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        out.append({"type": "function", "function": fn})
    return out


def routing_text(req: GenerateRequest) -> str:
    """A canonical text of what the request's prompt starts with (same text <=> same prompt prefix)."""
    if req.messages is None:
        return req.prompt if isinstance(req.prompt, str) else " ".join(map(str, req.prompt or []))
    head = json.dumps([req.reasoning_effort, req.tools], sort_keys=True, default=str)
    return head + "".join(json.dumps(m, sort_keys=True, default=str) for m in req.messages)


def prefix_hashes(text: str, chunk: int = 256, limit: int = 64) -> list[int]:
    """Chained 64-bit hashes of the first `limit` whole chunks: equal hash i <=> equal first (i+1) chunks."""
    out, h = [], b""
    for i in range(min(len(text) // chunk, limit)):
        h = hashlib.blake2b(h + text[i * chunk:(i + 1) * chunk].encode("utf-8", "surrogatepass"),
                            digest_size=8).digest()
        out.append(int.from_bytes(h, "little"))
    return out


__all__ = ["ApiError", "GenerateRequest", "parse_chat", "parse_completion", "parse_json", "parse_responses"]
