"""The Responses API's built-in tools and their items: request models, and the chat messages they become.

Flow: a request's `tools` may name `code_interpreter` (the python tool), `web_search` / `web_search_preview` (the
browser tool) and `mcp` (a server from the operator's allow-list) besides functions -> `builtin_of(tools)` gives what
the replica offers the model. Items of these calls (from the request's `input`, or from stored responses followed by
`previous_response_id`) become chat messages the harmony renderer knows (`call_messages`): an assistant message
`{"builtin_call": {recipient, channel, content_type, text, item_id}}` and the tool's answer
`{"role": "tool", "builtin_result": {author, channel}, "content": ...}`. The exact header the model wrote and the
text it read back are kept by the server (`hidden`, keyed by item id); items a client wrote get the usual headers.
An unanswered call as the very last item is left open: the replica runs it before the model goes on.
"""

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from cluster.protocol.common import ApiModel

BUILTIN_ITEM_TYPES = ("code_interpreter_call", "web_search_call", "mcp_call", "mcp_list_tools")
WEB_SEARCH_TYPES = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")
INCLUDABLE = ("code_interpreter_call.outputs", "web_search_call.action.sources")
NOT_RUN = "error: this call was not run (the conversation went on without its result)"
UNKNOWN_RESULT = "(the result of this call is not available)"


# -- tools ------------------------------------------------------------------------------------------------------------
class ContainerAuto(ApiModel):
    type: Literal["auto"]
    file_ids: list[str] | None = Field(None, max_length=0, description="files are not supported (only empty)")
    memory_limit: None = Field(None, description="the operator's limit applies (only null)")
    network_policy: None = Field(None, description="the sandbox has no network (only null)")


class CodeInterpreterTool(ApiModel):
    type: Literal["code_interpreter"]
    container: Literal["auto"] | ContainerAuto = Field(description="auto: a python session per conversation")


class ApproximateLocation(ApiModel):
    type: Literal["approximate"]


class WebSearchTool(ApiModel):
    type: Literal["web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"]
    search_context_size: Literal["low", "medium", "high"] | None = Field(
        None, description="results shown to the model: low 1/3, medium 2/3, high all of browser.max_results")
    user_location: ApproximateLocation | None = Field(None, description="no localisation (only {type: approximate})")
    filters: None = Field(None, description="no domain filters (only null)")
    search_content_types: list[Literal["text"]] | None = None


class McpAllowedTools(ApiModel):
    tool_names: list[str] | None = None
    read_only: None = Field(None, description="only null")


def _never(value):
    if value is None:
        raise ValueError('must be "never" (OpenAI asks for approval when it is left out; this server has no approval '
                         'requests, so say so explicitly)')
    return value


class McpTool(ApiModel):
    type: Literal["mcp"]
    server_label: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
    server_url: str = Field(min_length=1, description="one of the operator's tools.mcp.allowed_servers")
    server_description: str | None = None
    allowed_tools: list[str] | McpAllowedTools | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = Field(None, description="sent as Authorization: Bearer ...")
    require_approval: Annotated[Literal["never"] | None, AfterValidator(_never)] = Field(
        None, validate_default=True, description="only never: approval requests are not supported")
    connector_id: None = Field(None, description="connectors are not supported (only null)")


def builtin_of(tools: list) -> dict:
    """{"python": "tools[i]" | None, "browser": {"results": fraction, "param": "tools[i]"} | None, "mcp": [server
    dicts]} of a request's tools (each names where the request asked for it)."""
    out: dict = {"python": None, "browser": None, "mcp": []}
    for i, tool in enumerate(tools or []):
        if isinstance(tool, CodeInterpreterTool):
            out["python"] = f"tools[{i}]"
        elif isinstance(tool, WebSearchTool):
            out["browser"] = {"results": {"low": 1 / 3, "medium": 2 / 3}.get(tool.search_context_size, 1.0),
                              "param": f"tools[{i}]"}
        elif isinstance(tool, McpTool):
            allowed = tool.allowed_tools.tool_names if isinstance(tool.allowed_tools, McpAllowedTools) \
                else tool.allowed_tools
            headers = dict(tool.headers or {})
            if tool.authorization:
                headers["Authorization"] = f"Bearer {tool.authorization}"
            out["mcp"].append({"server_label": tool.server_label, "server_url": tool.server_url,
                               "description": tool.server_description or "", "allowed_tools": allowed,
                               "headers": headers, "tools": None, "param": f"tools[{i}]"})
    return out


# -- items ------------------------------------------------------------------------------------------------------------
class LogsOutput(ApiModel):
    type: Literal["logs"]
    logs: str


class CodeInterpreterCallItem(ApiModel):
    type: Literal["code_interpreter_call"]
    id: str = Field(min_length=1)
    code: str | None = None
    container_id: str | None = None
    outputs: list[LogsOutput] | None = None
    status: Literal["in_progress", "completed", "incomplete", "interpreting", "failed"] | None = None


class Source(ApiModel):
    type: Literal["url"]
    url: str


class SearchAction(ApiModel):
    type: Literal["search"]
    query: str | None = None
    queries: list[str] | None = None
    sources: list[Source] | None = None


class OpenPageAction(ApiModel):
    type: Literal["open_page"]
    url: str | None = None


class FindAction(ApiModel):
    type: Literal["find_in_page", "find"]
    pattern: str
    url: str | None = None


class WebSearchCallItem(ApiModel):
    type: Literal["web_search_call"]
    id: str = Field(min_length=1)
    action: Annotated[SearchAction | OpenPageAction | FindAction, Field(discriminator="type")]
    status: Literal["in_progress", "searching", "completed", "failed", "incomplete"] | None = None


class McpCallItem(ApiModel):
    type: Literal["mcp_call"]
    id: str = Field(min_length=1)
    server_label: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    output: str | None = None
    error: str | dict[str, Any] | None = None
    status: Literal["in_progress", "completed", "incomplete", "calling", "failed"] | None = None
    approval_request_id: None = None


class McpListedTool(ApiModel):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    annotations: dict[str, Any] | None = None


class McpListToolsItem(ApiModel):
    type: Literal["mcp_list_tools"]
    id: str = Field(min_length=1)
    server_label: str = Field(min_length=1)
    tools: list[McpListedTool]
    error: str | None = None


# -- items -> chat messages ---------------------------------------------------------------------------------------
def call_messages(item: ApiModel, hidden: dict | None, last: bool) -> list[dict]:
    """A built-in call item as the assistant's call and the tool's answer (the answer left out when the call is
    unanswered and `last`: the replica runs it). `hidden`: what the server kept of the call (exact header, result)."""
    if isinstance(item, McpListToolsItem):
        return []
    call, result = _call_and_result(item)
    if hidden:
        call = {**call, **{k: hidden[k] for k in ("recipient", "channel", "content_type", "text") if k in hidden}}
        result = hidden.get("result", result)
    call["item_id"] = item.id
    messages = [{"role": "assistant", "content": None, "builtin_call": call}]
    if result is None and last and item.status in (None, "in_progress", "interpreting", "searching", "calling"):
        return messages
    author = call["recipient"]
    return messages + [{"role": "tool", "content": result if result is not None else NOT_RUN,
                        "builtin_result": {"author": author, "channel": call["channel"]}}]


def _call_and_result(item) -> tuple[dict, str | None]:
    if isinstance(item, CodeInterpreterCallItem):
        result = "".join(o.logs for o in item.outputs) if item.outputs is not None else None
        if result is None and item.status in ("completed", "failed", "incomplete"):
            result = UNKNOWN_RESULT
        return {"recipient": "python", "channel": "analysis", "content_type": "code", "text": item.code or ""}, result
    if isinstance(item, WebSearchCallItem):
        recipient, args = _browser_call(item.action)
        finished = item.status in ("completed", "failed", "incomplete")
        return ({"recipient": recipient, "channel": "analysis", "content_type": "json", "text": json.dumps(args)},
                UNKNOWN_RESULT if finished else None)
    result = item.output if item.output is not None else (_error_text(item.error) if item.error else None)
    return ({"recipient": f"{item.server_label}.{item.name}", "channel": "commentary",
             "content_type": "<|constrain|>json", "text": item.arguments}, result)


def _browser_call(action) -> tuple[str, dict]:
    if isinstance(action, SearchAction):
        return "browser.search", {"query": action.query or " ".join(action.queries or [])}
    if isinstance(action, OpenPageAction):
        return "browser.open", {"id": action.url} if action.url else {}
    return "browser.find", {"pattern": action.pattern}


def _error_text(error) -> str:
    return f"error: {error if isinstance(error, str) else json.dumps(error)}"


def mcp_listings(items: list) -> dict[str, list[dict]]:
    """server_label -> the tools an mcp_list_tools item listed (the last listing of a label wins)."""
    return {i.server_label: [t.model_dump(exclude_none=True) for t in i.tools]
            for i in items if isinstance(i, McpListToolsItem) and i.error is None}
