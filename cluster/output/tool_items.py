"""Output items of the tools the server runs (code_interpreter_call, web_search_call, mcp_call, mcp_list_tools) and
their streaming events, for the Responses formatter.

Flow: the model's message to a built-in recipient opens an item of the tool's kind (`new_item`; `python` ->
code_interpreter_call, `browser.*` -> web_search_call, `{server_label}.*` -> mcp_call); its text streams as the
kind's delta events (code, MCP arguments; a browser call shows nothing until its arguments are whole) -> the call
closes -> `closed_events` -> the replica runs the tool (`running_events`) -> `resolve` fills the item from the
`ToolResult` and gives the completed or failed events. `public(item, include)` is the item as a client sees it
(code outputs and search sources only when `include` asks, as OpenAI).
"""

import json
import secrets

PREFIX = {"python": "ci_", "browser": "ws_", "mcp": "mcp_"}
ITEM_TYPE = {"python": "code_interpreter_call", "browser": "web_search_call", "mcp": "mcp_call"}


def kind_of(recipient: str, builtin: dict) -> str:
    """"python", "browser", "mcp" (a built-in tool this request offers) or "function"."""
    if recipient == "python" and builtin.get("python"):
        return "python"
    if recipient.startswith("browser.") and builtin.get("browser"):
        return "browser"
    if recipient.split(".")[0] in {s["server_label"] for s in builtin.get("mcp", [])}:
        return "mcp"
    return "function"


def new_item(kind: str, recipient: str, item_id: str | None, container: str) -> dict:
    item_id = item_id or PREFIX[kind] + secrets.token_hex(12)
    if kind == "python":
        return {"type": "code_interpreter_call", "id": item_id, "code": "", "container_id": container,
                "outputs": None, "status": "in_progress"}
    if kind == "browser":
        return {"type": "web_search_call", "id": item_id, "action": {"type": "search", "query": ""},
                "status": "in_progress"}
    label, _, name = recipient.partition(".")
    return {"type": "mcp_call", "id": item_id, "server_label": label, "name": name, "arguments": "", "output": None,
            "error": None, "status": "in_progress"}


def opened_events(item: dict) -> list[tuple[str, dict]]:
    """(event type, payload) pairs once the item is announced (a browser call: once its arguments are whole)."""
    if item["type"] == "code_interpreter_call":
        return [("response.code_interpreter_call.in_progress", {})]
    if item["type"] == "mcp_call":
        return [("response.mcp_call.in_progress", {})]
    return [("response.web_search_call.in_progress", {})]


def delta_event(item: dict, text: str) -> tuple[str, dict] | None:
    if item["type"] == "code_interpreter_call":
        item["code"] += text
        return "response.code_interpreter_call_code.delta", {"delta": text}
    if item["type"] == "mcp_call":
        item["arguments"] += text
        return "response.mcp_call_arguments.delta", {"delta": text}
    return None


def closed_events(item: dict, text: str) -> list[tuple[str, dict]]:
    """The model's message is whole: the code or arguments are final (a browser call's action is known now)."""
    if item["type"] == "code_interpreter_call":
        return [("response.code_interpreter_call_code.done", {"code": item["code"]})]
    if item["type"] == "mcp_call":
        return [("response.mcp_call_arguments.done", {"arguments": item["arguments"]})]
    return []


def running_events(item: dict) -> list[tuple[str, dict]]:
    if item["type"] == "code_interpreter_call":
        item["status"] = "interpreting"
        return [("response.code_interpreter_call.interpreting", {})]
    if item["type"] == "web_search_call":
        item["status"] = "searching"
        return [("response.web_search_call.searching", {})]
    return []


def resolve(item: dict, result) -> list[tuple[str, dict]]:
    """Fills `item` from a cluster.tools.ToolResult; the completed (or failed) event."""
    item.update(result.fields)
    item["status"] = "failed" if result.failed else "completed"
    kind = {"code_interpreter_call": "code_interpreter_call", "web_search_call": "web_search_call",
            "mcp_call": "mcp_call"}[item["type"]]
    done = "failed" if result.failed and kind == "mcp_call" else "completed"
    return [(f"response.{kind}.{done}", {})]


def browser_action(recipient: str, arguments: str) -> dict:
    """The web_search_call action of a browser call (the URL of an open is filled in by the tool's result)."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    name = recipient.removeprefix("browser.")
    if name == "search":
        return {"type": "search", "query": str(args.get("query", ""))}
    if name == "find":
        return {"type": "find_in_page", "pattern": str(args.get("pattern", "")), "url": ""}
    url = args.get("id")
    return {"type": "open_page", "url": url if isinstance(url, str) else None}


def listing_item(server: dict, tools: list[dict] | None, error: str | None) -> dict:
    return {"type": "mcp_list_tools", "id": "mcpl_" + secrets.token_hex(12), "server_label": server["server_label"],
            "tools": tools or [], "error": error}


def public(item: dict, include: list[str]) -> dict:
    """The item as the client sees it: code outputs and search sources only when `include` names them."""
    if item["type"] == "code_interpreter_call" and "code_interpreter_call.outputs" not in include:
        return {**item, "outputs": None}
    if item["type"] == "web_search_call" and "sources" in item.get("action", {}) \
            and "web_search_call.action.sources" not in include:
        return {**item, "action": {k: v for k, v in item["action"].items() if k != "sources"}}
    return item
