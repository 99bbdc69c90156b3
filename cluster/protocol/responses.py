"""/v1/responses requests: the OpenAI Responses request body, validated -> `GenerateRequest`.

Flow: `parse_request(body)` -> `ResponsesRequest` (input as a string or items: messages, reasoning, function_call,
function_call_output and the built-in tools' items; function, code_interpreter, web_search and mcp tools;
text.format; reasoning effort; store, background, previous_response_id, include) -> `to_generate(req, created,
history)`: the stored conversation's messages (`history`, cluster/responses/) then the input items become chat
messages (`input_to_messages`), which the replica renders with harmony -> `GenerateRequest(kind="response")` carrying
in `echo` what the response object repeats (instructions, tools, tool_choice, metadata, store, ...). What is stored
and run in the background is the front door's business (cluster/responses/service.py); `parse_responses` is the
stateless shortcut.
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
from cluster.protocol.response_items import (
    BUILTIN_ITEM_TYPES,
    INCLUDABLE,
    WEB_SEARCH_TYPES,
    CodeInterpreterCallItem,
    CodeInterpreterTool,
    McpCallItem,
    McpListToolsItem,
    McpTool,
    WebSearchCallItem,
    WebSearchTool,
    builtin_of,
    call_messages,
)

UNSUPPORTED = {
    "top_logprobs": "logprobs are not supported on /v1/responses yet; use /v1/completions",
    "prompt": "stored prompts are not supported; send input and instructions",
    "conversation": "the Conversations API is not offered; chain responses with previous_response_id",
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
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[CodeInterpreterCallItem, Tag("code_interpreter_call")]
    | Annotated[WebSearchCallItem, Tag("web_search_call")] | Annotated[McpCallItem, Tag("mcp_call")]
    | Annotated[McpListToolsItem, Tag("mcp_list_tools")],
    Discriminator(lambda v: v.get("type", "message") if isinstance(v, dict) else getattr(v, "type", None),
                  custom_error_type="invalid_item_type",
                  custom_error_message="type must be one of message, reasoning, function_call, function_call_output, "
                                       + ", ".join(BUILTIN_ITEM_TYPES))]


class ResponseFunctionTool(ApiModel):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Off | None = Field(None, description="only false or null for now")


def _tool_tag(value) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "web_search" if kind in WEB_SEARCH_TYPES else "function_tool" if kind == "function" else kind


Tool = Annotated[
    Annotated[ResponseFunctionTool, Tag("function_tool")] | Annotated[CodeInterpreterTool, Tag("code_interpreter")]
    | Annotated[WebSearchTool, Tag("web_search")] | Annotated[McpTool, Tag("mcp")],
    Discriminator(_tool_tag, custom_error_type="invalid_item_type",
                  custom_error_message="type must be one of function, code_interpreter, web_search, "
                                       "web_search_preview, mcp (other built-in tools are not offered)")]


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
    tools: list[Tool] | None = None
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
    store: bool | None = Field(None, description="keep the response for previous_response_id and GET (default: the "
                                                 "operator's responses.store)")
    background: bool | None = Field(None, description="run after the request returns; poll GET /v1/responses/{id}")
    previous_response_id: str | None = Field(None, min_length=1, description="continue this stored response")
    include: list[Literal["code_interpreter_call.outputs", "web_search_call.action.sources"]] | None = Field(
        None, description=f"extra output data: {', '.join(INCLUDABLE)}")


def parse_request(data: dict) -> ResponsesRequest:
    """The validated request (400 naming the field)."""
    req = validate(ResponsesRequest, data, UNSUPPORTED)
    if req.background and req.store is False:
        raise bad_request("background responses are stored (that is how they are polled); send store: true or "
                          "leave store out", "store")
    return req


def parse_responses(data: dict, created: int) -> GenerateRequest:
    """Stateless: the request as a GenerateRequest with nothing stored (`previous_response_id` needs the store)."""
    req = parse_request(data)
    if req.previous_response_id is not None:
        raise bad_request("previous_response_id needs the response store (cluster/responses/)",
                          "previous_response_id")
    return to_generate(req, created, store=False)


def to_generate(req: ResponsesRequest, created: int, history: list[dict] | None = None, store: bool = False,
                response_id: str | None = None, conversation: str | None = None,
                listings: dict | None = None) -> GenerateRequest:
    """`req` after the stored conversation `history` (chat messages) as a GenerateRequest; `listings`: MCP tool lists
    already in the conversation (server_label -> tools)."""
    tools = function_tools(_chat_tools(req.tools))
    offered = apply_tool_choice(tools, req.tool_choice)
    sampling = {k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p)) if v is not None}
    if req.max_output_tokens is not None:
        sampling["max_tokens"] = req.max_output_tokens
    check_sampling(sampling, {"max_tokens": "max_output_tokens"})
    effort = req.reasoning.effort if req.reasoning is not None else None
    messages = input_to_messages(req.input, req.instructions, history=history)
    response_id = response_id or "resp_" + secrets.token_hex(16)
    builtin = builtin_of(req.tools) if req.tool_choice != "none" else {}
    for server in builtin.get("mcp", []):
        server["tools"] = (listings or {}).get(server["server_label"])
    return GenerateRequest("response", req.model, response_id, sampling, bool(req.stream), include_usage(req),
                           messages=messages, tools=offered, reasoning_effort=effort,
                           renames={"max_tokens": "max_output_tokens", "prompt": "input"}, created=created,
                           echo=_echo(req, store), builtin=builtin, max_tool_calls=req.max_tool_calls,
                           conversation=conversation or response_id, include=list(req.include or []))


def _chat_tools(tools: list | None):
    """Responses function tools ({"type", "name", "parameters", ...}) in the chat shape function_tools reads."""
    if tools is None:
        return None
    from cluster.protocol.chat import FunctionTool  # noqa: PLC0415

    return [FunctionTool.model_validate({"type": "function", "function": t.model_dump(exclude={"type"},
                                                                                      exclude_none=True)})
            for t in tools if isinstance(t, ResponseFunctionTool)]


def _echo(req: ResponsesRequest, store: bool = False) -> dict:
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
        "store": store, "background": bool(req.background), "previous_response_id": req.previous_response_id,
    }


def _dump(value):
    return value.model_dump(exclude_none=True) if isinstance(value, ApiModel) else value


# -- input items -> chat messages ----------------------------------------------------------------------------------


def input_to_messages(items, instructions: str | None, history: list[dict] | None = None,
                      hidden: dict | None = None) -> list[dict]:
    """Responses `instructions`, the stored conversation's messages (`history`) and `input` (a string or items) ->
    OpenAI chat messages. `hidden`: what the server kept of built-in calls (item id -> header and result)."""
    messages = ([{"role": "developer", "content": instructions}] if instructions else []) + list(history or [])
    if isinstance(items, str):
        if not items:
            raise bad_request("input must be a non-empty string or list of items", "input")
        return messages + [{"role": "user", "content": items}]
    if not items:
        raise bad_request("input must be a non-empty string or list of items", "input")
    return messages + items_to_messages(items, hidden, open_last=True)


def items_to_messages(items: list, hidden: dict | None = None, open_last: bool = False) -> list[dict]:
    """Items (models or plain dicts) -> chat messages; with `open_last`, a built-in call that is the last item and
    has no result stays open (the replica runs it)."""
    if not all(isinstance(item, ApiModel) for item in items):  # plain dicts (stored items, other callers)
        items = validate(_Input, {"input": items}).input
    messages = []
    for i, item in enumerate(items):
        if item.type in BUILTIN_ITEM_TYPES:
            messages += call_messages(item, (hidden or {}).get(item.id), open_last and i == len(items) - 1)
        else:
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

