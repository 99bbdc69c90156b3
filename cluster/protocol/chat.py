"""/v1/chat/completions requests: the OpenAI Chat Completions request body, validated -> `GenerateRequest`.

Flow: `parse_chat(body)` -> `ChatRequest` (messages by role, function tools with their JSON Schemas checked, tool
choice, sampling ranges) -> the tools the prompt offers after `tool_choice` -> `GenerateRequest(kind="chat")`; the
replica renders the messages with harmony. What the server does not do is refused by name (`UNSUPPORTED`).
"""

import secrets
from typing import Annotated, Any, Literal

from pydantic import Field

from cluster.errors import bad_request
from cluster.protocol.common import (
    ApiModel,
    MaxTokens,
    Metadata,
    Off,
    SamplingFields,
    check_sampling,
    include_usage,
    json_schema_of,
    sampling_of,
    validate,
)
from cluster.protocol.request import GenerateRequest

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "n", "seed", "stop", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "ignore_eos", "min_tokens")
UNSUPPORTED = {
    "audio": "gpt-oss reads and writes text only",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "send the search tool's results as a tool message, or use /v1/responses",
    "functions": "deprecated by OpenAI; send tools instead",
    "function_call": "deprecated by OpenAI; send tool_choice instead",
    "verbosity": "gpt-oss has no verbosity control; use reasoning_effort",
    "store": "chat completions are not stored; use /v1/responses",
    "logprobs": "chat logprobs are not supported yet; use /v1/completions with logprobs",
    "top_logprobs": "chat logprobs are not supported yet; use /v1/completions with logprobs",
}


class TextPart(ApiModel):
    type: Literal["text"]
    text: str


class RefusalPart(ApiModel):
    type: Literal["refusal"]
    refusal: str


Text = str | list[TextPart]


class SystemMessage(ApiModel):
    role: Literal["system"]
    content: Text
    name: str | None = None


class DeveloperMessage(ApiModel):
    role: Literal["developer"]
    content: Text
    name: str | None = None


class UserMessage(ApiModel):
    role: Literal["user"]
    content: Text = Field(description="text only (gpt-oss reads no images, audio or files)")
    name: str | None = None


class ToolCallFunction(ApiModel):
    name: str = Field(min_length=1)
    arguments: str = Field(description="the arguments as a JSON text")


class ToolCall(ApiModel):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class AssistantMessage(ApiModel):
    role: Literal["assistant"]
    content: str | list[TextPart | RefusalPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = Field(None, description="extension: the turn's reasoning (analysis channel)")
    reasoning: str | None = Field(None, description="extension: the same as reasoning_content")


class ToolMessage(ApiModel):
    role: Literal["tool"]
    content: Text
    tool_call_id: str = Field(min_length=1)


Message = Annotated[SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
                    Field(discriminator="role")]


class FunctionDefinition(ApiModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema (Draft 2020-12) of an object")
    strict: Off | None = Field(None, description="only false or null for now: arguments are not "
                                                             "constrained yet")


class FunctionTool(ApiModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(ApiModel):
    name: str


class NamedToolChoice(ApiModel):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(ApiModel):
    type: Literal["text"] = Field(description="only text for now")


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_tokens: MaxTokens = None
    max_completion_tokens: MaxTokens = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(None, description="gpt-oss calls one tool per turn either way")
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = Field(None, description="only {'type': 'text'} for now")
    metadata: Metadata = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(None, description="accepted; prefix caching is automatic")
    service_tier: Literal["auto", "default"] | None = None
    modalities: list[Literal["text"]] | None = None


def parse_chat(data: dict, created: int) -> GenerateRequest:
    req = validate(ChatRequest, data, UNSUPPORTED)
    max_tokens, max_name = _first(req, "max_completion_tokens", "max_tokens")
    sampling = sampling_of(req, SAMPLING)
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
    check_sampling(sampling, {"max_tokens": max_name})
    tools = apply_tool_choice(function_tools(req.tools), req.tool_choice)
    messages = [_as_dict(m) for m in req.messages]
    return GenerateRequest("chat", req.model, "chatcmpl-" + secrets.token_hex(12), sampling, bool(req.stream),
                           include_usage(req), messages=messages, tools=tools, reasoning_effort=req.reasoning_effort,
                           renames={"max_tokens": max_name, "prompt": "messages"}, created=created)


def function_tools(tools: list[FunctionTool] | None, where: str = "tools") -> list[dict] | None:
    """Chat-style function tools, each schema checked; `strict` is refused until arguments are constrained."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        fn = tool.function
        params = json_schema_of(fn.parameters, f"{where}[{i}].function.parameters")
        out.append({"type": "function", "function": {"name": fn.name, "description": fn.description or "",
                                                     **({"parameters": params} if params is not None else {})}})
    return out


def apply_tool_choice(tools: list[dict] | None, choice) -> list[dict] | None:
    """The tools the prompt offers: none for "none", the named one for a named choice, else all.

    "required" and a named choice are honoured by what the prompt offers, not enforced by constrained decoding.
    """
    if choice is None or choice in ("auto", "required"):
        if choice == "required" and not tools:
            raise bad_request("tool_choice 'required' needs at least one tool in tools", "tool_choice")
        return tools or None
    if choice == "none":
        return None
    name = choice.function.name if hasattr(choice, "function") else choice.name
    chosen = [t for t in tools or [] if t["function"]["name"] == name]
    if not chosen:
        raise bad_request(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
    return chosen


def _as_dict(message: ApiModel) -> dict:
    """A message as the harmony renderer reads it (an assistant's refusal is its answer text)."""
    d = message.model_dump(exclude_none=True)
    if d["role"] == "assistant":
        refusal = d.pop("refusal", None)
        if isinstance(d.get("content"), list):
            d["content"] = "".join(p.get("text") or p.get("refusal") or "" for p in d["content"])
        if refusal and not d.get("content"):
            d["content"] = refusal
    return d


def _first(req, *names) -> tuple[int | None, str]:
    for name in names:
        if getattr(req, name) is not None:
            return getattr(req, name), name
    return None, names[-1]
