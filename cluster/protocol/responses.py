"""/v1/responses requests (stateless): the OpenAI Responses request body, validated -> `GenerateRequest`.

Flow: `parse_responses(body)` -> `ResponsesRequest` (input as a string or items: messages, reasoning, function_call,
function_call_output; function tools; text.format; reasoning effort) -> the input items become chat messages
(`input_to_messages`), which the replica renders with harmony -> `GenerateRequest(kind="response")` carrying in
`echo` what the response object repeats (instructions, tools, tool_choice, metadata, ...). Nothing is stored yet:
`store: true`, `previous_response_id` and `background` are refused by name, as are built-in tools.
"""

import secrets
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from cluster.errors import bad_request
from cluster.protocol.chat import apply_tool_choice, function_tools
from cluster.protocol.common import (
    ApiModel,
    MaxTokens,
    Metadata,
    Off,
    StreamOptions,
    Temperature,
    TopP,
    check_sampling,
    include_usage,
    validate,
)
from cluster.protocol.request import GenerateRequest

UNSUPPORTED = {
    "previous_response_id": "responses are not stored yet; send the whole conversation as input items",
    "store": "responses are not stored yet; leave it out or send false",
    "background": "background responses are not supported yet; stream instead",
    "include": "no extra output data is available",
    "top_logprobs": "logprobs are not supported on /v1/responses yet; use /v1/completions",
    "prompt": "stored prompts are not supported; send input and instructions",
    "conversation": "conversations are not stored yet; send the whole conversation as input items",
}


class InputText(ApiModel):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class RefusalContent(ApiModel):
    type: Literal["refusal"]
    refusal: str


class MessageItem(ApiModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | RefusalContent]
    id: str | None = None
    status: str | None = None


class ReasoningPart(ApiModel):
    type: Literal["summary_text", "reasoning_text"]
    text: str


class ReasoningItem(ApiModel):
    type: Literal["reasoning"]
    summary: list[ReasoningPart] = Field(default_factory=list)
    content: list[ReasoningPart] | None = None
    id: str | None = None
    encrypted_content: None = Field(None, description="not produced nor read (only null)")
    status: str | None = None


class FunctionCallItem(ApiModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(ApiModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(lambda v: v.get("type", "message") if isinstance(v, dict) else getattr(v, "type", None),
                  custom_error_type="invalid_item_type",
                  custom_error_message="type must be one of message, reasoning, function_call, function_call_output")]


class ResponseFunctionTool(ApiModel):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Off | None = Field(None, description="only false or null for now")


class NamedFunctionChoice(ApiModel):
    type: Literal["function"]
    name: str


class Reasoning(ApiModel):
    effort: Literal["low", "medium", "high"] | None = None
    summary: None = Field(None, description="reasoning summaries are not produced (only null)")


class TextFormat(ApiModel):
    type: Literal["text"] = Field(description="only text for now")


class Text(ApiModel):
    format: TextFormat | None = None
    verbosity: None = Field(None, description="gpt-oss has no verbosity control (only null)")


class ResponsesRequest(ApiModel):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: MaxTokens = None
    max_tool_calls: int | None = Field(None, ge=1)
    temperature: Temperature = None
    top_p: TopP = None
    reasoning: Reasoning | None = None
    tools: list[ResponseFunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: Text | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: Metadata = None
    truncation: Literal["disabled"] | None = Field(None, description="only disabled: a prompt too long is a 400")
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default"] | None = None


def parse_responses(data: dict, created: int) -> GenerateRequest:
    _refuse_builtin_tools(data.get("tools"))
    req = validate(ResponsesRequest, data, UNSUPPORTED)
    tools = function_tools(_chat_tools(req.tools))
    offered = apply_tool_choice(tools, req.tool_choice)
    sampling = {k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p)) if v is not None}
    if req.max_output_tokens is not None:
        sampling["max_tokens"] = req.max_output_tokens
    check_sampling(sampling, {"max_tokens": "max_output_tokens"})
    effort = req.reasoning.effort if req.reasoning is not None else None
    return GenerateRequest("response", req.model, "resp_" + secrets.token_hex(16), sampling, bool(req.stream),
                           include_usage(req), messages=input_to_messages(req.input, req.instructions),
                           tools=offered, reasoning_effort=effort, renames={"max_tokens": "max_output_tokens",
                                                                            "prompt": "input"},
                           created=created, echo=_echo(req))


def _refuse_builtin_tools(tools) -> None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind is not None and kind != "function":
            raise bad_request(f"tools[{i}].type {kind!r} is not supported yet: only function tools (built-in tools "
                              "are not run by this server yet)", f"tools[{i}].type", "unsupported_parameter")


def _chat_tools(tools: list[ResponseFunctionTool] | None):
    """Responses function tools ({"type", "name", "parameters", ...}) in the chat shape function_tools reads."""
    if tools is None:
        return None
    from cluster.protocol.chat import FunctionTool  # noqa: PLC0415

    return [FunctionTool.model_validate({"type": "function", "function": t.model_dump(exclude={"type"},
                                                                                      exclude_none=True)})
            for t in tools]


def _echo(req: ResponsesRequest) -> dict:
    """What the response object repeats of the request (OpenAI's defaults where it gave nothing)."""
    return {
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls, "metadata": req.metadata or {},
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "tool_choice": _dump(req.tool_choice) if req.tool_choice is not None else "auto",
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "truncation": "disabled", "user": req.user, "safety_identifier": req.safety_identifier,
        "prompt_cache_key": req.prompt_cache_key, "service_tier": "default",
        "store": False, "background": False, "previous_response_id": None,
    }


def _dump(value):
    return value.model_dump(exclude_none=True) if isinstance(value, ApiModel) else value


# -- input items -> chat messages ----------------------------------------------------------------------------------


def input_to_messages(items, instructions: str | None) -> list[dict]:
    """Responses `input` (a string or items) and `instructions` -> OpenAI chat messages."""
    messages = [{"role": "developer", "content": instructions}] if instructions else []
    if isinstance(items, str):
        if not items:
            raise bad_request("input must be a non-empty string or list of items", "input")
        return messages + [{"role": "user", "content": items}]
    if not items:
        raise bad_request("input must be a non-empty string or list of items", "input")
    if not all(isinstance(item, ApiModel) for item in items):  # plain dicts (callers other than parse_responses)
        items = validate(_Input, {"input": items}).input
    for item in items:
        messages += _item(item)
    return messages


class _Input(ApiModel):
    input: list[InputItem]


def _item(item: ApiModel) -> list[dict]:
    if isinstance(item, MessageItem):
        return [{"role": item.role, "content": _text(item.content)}]
    if isinstance(item, ReasoningItem):
        text = "".join(p.text for p in (item.content or item.summary))
        return [{"role": "assistant", "reasoning_content": text, "content": None}] if text else []
    if isinstance(item, FunctionCallItem):
        call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    output = item.output if isinstance(item.output, str) else _text(item.output)
    return [{"role": "tool", "tool_call_id": item.call_id, "content": output}]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text if isinstance(p, InputText) else p.refusal for p in content)

