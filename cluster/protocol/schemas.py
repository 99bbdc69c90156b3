"""The response objects the API sends, as pydantic models: what /openapi.json publishes and what tests validate
against (the formatters in cluster/output/ make plain dicts; these models describe them, field for field).

Every route's documented responses come from `ROUTES`: the 200 body (JSON, or server-sent events when streaming)
and the error statuses it may return, each an OpenAI error body.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cluster.protocol.chat import ChatRequest
from cluster.protocol.completions import CompletionRequest
from cluster.protocol.responses import ResponsesRequest


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors and models ------------------------------------------------------------------------------------------
class ErrorDetail(Out):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, timeout_error, "
                                  "server_error, not_found")
    param: str | None = Field(description="the request field at fault, as a path (messages[0].content)")
    code: str | None


class ErrorBody(Out):
    error: ErrorDetail


class ModelCard(Out):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Out):
    object: Literal["list"]
    data: list[ModelCard]


# -- chat completions and completions ----------------------------------------------------------------------------
class PromptTokensDetails(Out):
    cached_tokens: int


class CompletionTokensDetails(Out):
    reasoning_tokens: int


class Usage(Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class FunctionCall(Out):
    name: str
    arguments: str


class ChatToolCall(Out):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(Out):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    reasoning_content: str | None = Field(description="extension: the reasoning (harmony's analysis channel)")
    tool_calls: list[ChatToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(Out):
    index: int
    message: ChatMessage
    logprobs: None
    finish_reason: FinishReason


class ChatCompletion(Out):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(Out):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Out):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class Completion(Out):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


# -- responses ------------------------------------------------------------------------------------------------------
class OutputReasoningText(Out):
    type: Literal["reasoning_text"]
    text: str


class OutputText(Out):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class OutputReasoning(Out):
    type: Literal["reasoning"]
    id: str
    summary: list[Any]
    content: list[OutputReasoningText]
    status: Literal["in_progress", "completed"]


class OutputMessage(Out):
    type: Literal["message"]
    id: str
    role: Literal["assistant"]
    status: Literal["in_progress", "completed"]
    content: list[OutputText]


class OutputFunctionCall(Out):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed"]


class OutputLogs(Out):
    type: Literal["logs"]
    logs: str


class OutputCodeInterpreterCall(Out):
    type: Literal["code_interpreter_call"]
    id: str
    code: str | None
    container_id: str
    outputs: list[OutputLogs] | None = Field(description="only with include code_interpreter_call.outputs")
    status: Literal["in_progress", "interpreting", "completed", "incomplete", "failed"]


class OutputUrlSource(Out):
    type: Literal["url"]
    url: str


class OutputSearchAction(Out):
    type: Literal["search"]
    query: str
    sources: list[OutputUrlSource] | None = Field(None, description="only with include web_search_call.action.sources")


class OutputOpenPageAction(Out):
    type: Literal["open_page"]
    url: str | None


class OutputFindInPageAction(Out):
    type: Literal["find_in_page"]
    pattern: str
    url: str


class OutputWebSearchCall(Out):
    type: Literal["web_search_call"]
    id: str
    action: OutputSearchAction | OutputOpenPageAction | OutputFindInPageAction
    status: Literal["in_progress", "searching", "completed", "incomplete", "failed"]


class OutputMcpCall(Out):
    type: Literal["mcp_call"]
    id: str
    server_label: str
    name: str
    arguments: str
    output: str | None
    error: dict[str, Any] | None
    status: Literal["in_progress", "completed", "incomplete", "failed"]


class OutputMcpTool(Out):
    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None


class OutputMcpListTools(Out):
    type: Literal["mcp_list_tools"]
    id: str
    server_label: str
    tools: list[OutputMcpTool]
    error: str | None


OutputItem = (OutputReasoning | OutputMessage | OutputFunctionCall | OutputCodeInterpreterCall | OutputWebSearchCall
              | OutputMcpCall | OutputMcpListTools)


class ResponseError(Out):
    code: str
    message: str


class ResponseUsage(Out):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: PromptTokensDetails
    output_tokens_details: CompletionTokensDetails


class Response(Out):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "queued", "failed", "cancelled"]
    model: str
    output: list[OutputItem]
    error: ResponseError | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    text: dict[str, Any]
    reasoning: dict[str, Any]
    usage: ResponseUsage | None = Field(description="null until a background response has run")
    max_output_tokens: int | None
    max_tool_calls: int | None
    truncation: Literal["disabled"]
    user: str | None
    safety_identifier: str | None
    prompt_cache_key: str | None
    service_tier: str
    store: bool
    background: bool
    previous_response_id: str | None


class DeletedResponse(Out):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class InputTokens(Out):
    object: Literal["response.input_tokens"]
    input_tokens: int


class InputItemList(Out):
    object: Literal["list"]
    data: list[dict[str, Any]] = Field(description="the response's input items (messages, calls, outputs), with ids")
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- routes -----------------------------------------------------------------------------------------------------------
_GENERATION_ERRORS = (400, 401, 404, 408, 413, 429, 503)
# path (or (path, method) where one path has several) -> (request model or None, 200 body model, streams, errors)
ROUTES = {
    "/v1/chat/completions": (ChatRequest, ChatCompletion, True, _GENERATION_ERRORS),
    "/v1/completions": (CompletionRequest, Completion, True, _GENERATION_ERRORS),
    "/v1/responses": (ResponsesRequest, Response, True, _GENERATION_ERRORS),
    "/v1/responses/input_tokens": (ResponsesRequest, InputTokens, False, (400, 401, 404, 413, 503)),
    "/v1/responses/{response_id}": (None, Response, True, (400, 401, 404, 503)),
    ("/v1/responses/{response_id}", "delete"): (None, DeletedResponse, False, (400, 401, 404, 503)),
    "/v1/responses/{response_id}/input_items": (None, InputItemList, False, (400, 401, 404, 503)),
    "/v1/responses/{response_id}/cancel": (None, Response, False, (400, 401, 404, 503)),
    "/v1/models": (None, ModelList, False, (401,)),
    "/v1/models/{model_id}": (None, ModelCard, False, (401, 404)),
}
ERROR_TEXT = {400: "a field is invalid or not supported (param names it)", 401: "missing or wrong API key",
              404: "no such model, or no such stored response for this API key", 408: "the request did not finish within its deadline",
              413: "the body is too large", 429: "the engine's queue is full (Retry-After)",
              503: "the model's queue is full, a replica failed, or the server is shutting down (Retry-After)"}


SSE_EVENT = {  # one server-sent event (stream: true): a JSON chunk / Responses event, an error, or [DONE]
    "type": "object", "required": ["data"],
    "properties": {"event": {"type": "string", "description": "the Responses event type (/v1/responses)"},
                   "data": {"type": "string", "description": "a chunk (chat.completion.chunk, text_completion) or a "
                                                             "Responses event as JSON; {\"error\": ...}; or [DONE]"}},
}


def route_responses(path: str, method: str | None = None) -> dict:
    """FastAPI's `responses=` for one route: the 200 body (and its event stream) and the error bodies."""
    _, body, streams, errors = ROUTES[(path, method) if method else path]
    ok: dict = {"model": body, "description": "the result"}
    if streams:
        ok["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    return {200: ok, **{status: {"model": ErrorBody, "description": ERROR_TEXT[status]} for status in errors}}
