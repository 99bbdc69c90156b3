"""MCP servers a response may use, through the `mcp` SDK (streamable HTTP), only those the operator allows.

Flow: a request's `{"type": "mcp", "server_url", ...}` tool was checked against `tools.mcp.allowed_servers` at the
front door (cluster/tools/toolset.py checks it again here) -> the replica lists the server's tools once per
conversation (`list_tools`; the listing becomes an `mcp_list_tools` item that later turns reuse) -> a call the model
writes to `{server_label}.{tool}` (a tool the listing has and `allowed_tools` keeps) runs with `call_tool`: its text
content, capped at `max_output_bytes`, is what the model reads; an error from the server is the call's error. Each
request opens its own short session (headers differ per request: a client's authorization travels with it).
"""

import asyncio
import json

from cluster.tools.result import ToolResult


class McpError(Exception):
    """The server could not be reached, refused, or answered with something that is not MCP."""


def _client(url: str, headers: dict, timeout: float):
    from mcp import Client  # noqa: PLC0415 - the SDK loads only where MCP is used
    from mcp.client.streamable_http import streamable_http_client  # noqa: PLC0415
    from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: PLC0415

    import httpx2  # noqa: PLC0415 - the SDK's HTTP client

    http = create_mcp_http_client(headers=headers or None, timeout=httpx2.Timeout(timeout))
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout, mode="legacy")


async def list_tools(server: dict, timeout: float) -> list[dict]:
    """[{"name", "description", "input_schema", "annotations"}] of the server; raises McpError."""
    async def run():
        async with _client(server["server_url"], server.get("headers") or {}, timeout) as client:
            listed = await client.list_tools()
        return [{"name": t.name, "description": t.description or "", "input_schema": t.input_schema or {},
                 **({"annotations": t.annotations.model_dump(exclude_none=True)} if t.annotations else {})}
                for t in listed.tools]
    return await _guard(run(), timeout, f"listing the tools of {server['server_url']}")


async def call_tool(server: dict, name: str, arguments: str, timeout: float, max_bytes: int) -> ToolResult:
    """Runs `name` on the server; the result's text is what the model reads."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError as err:
        return _failed(f"the arguments are not JSON: {err}", "mcp_protocol_error", -32602)
    if not isinstance(args, dict):
        return _failed("the arguments must be a JSON object", "mcp_protocol_error", -32602)
    allowed = server.get("allowed_tools")
    listed = {t["name"] for t in server.get("tools") or []}
    if (allowed is not None and name not in allowed) or (server.get("tools") is not None and name not in listed):
        return _failed(f"the tool {name!r} is not available on {server['server_label']}", "mcp_protocol_error",
                       -32601)

    async def run():
        async with _client(server["server_url"], server.get("headers") or {}, timeout) as client:
            return await client.call_tool(name, args)
    try:
        result = await _guard(run(), timeout, f"calling {name} on {server['server_url']}")
    except McpError as err:
        return _failed(str(err), "http_error", 502)
    text = _text(result.content, max_bytes)
    if result.is_error:
        return ToolResult(f"error: {text}", True, {"output": None, "error": {
            "type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}})
    return ToolResult(text, False, {"output": text, "error": None})


async def _guard(coro, timeout: float, what: str):
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise McpError(f"{what} took longer than {timeout:g} s") from None
    except (asyncio.CancelledError, McpError):
        raise
    except BaseException as err:  # noqa: BLE001 - connection refused, HTTP errors, bad JSON-RPC: one error type
        raise McpError(f"{what} failed: {_cause(err)}") from None


def _cause(err: BaseException) -> str:
    """The innermost error of an exception group (anyio task groups wrap what went wrong)."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return f"{type(err).__name__}: {err}"


def _text(content, max_bytes: int) -> str:
    parts = []
    for block in content or []:
        text = getattr(block, "text", None)
        parts.append(text if text is not None else json.dumps(block.model_dump(exclude_none=True)))
    data = "\n".join(parts).encode()
    if len(data) <= max_bytes:
        return data.decode()
    return data[:max_bytes].decode("utf-8", "ignore") + f"\n[{len(data) - max_bytes} more bytes dropped]"


def _failed(message: str, kind: str, code: int) -> ToolResult:
    return ToolResult(f"error: {message}", True, {"output": None, "error": {"type": kind, "code": code,
                                                                            "message": message}})
