"""What one replica can run for a response: the python tool, the browser backend, the MCP allow-list.

Flow: `ToolSet(config)` is built once per replica from the cluster config's `tools:` -> for each response,
`prepare(req)` checks what the request asks for against what this node can do (400 naming `tools` when python is
not enabled or cannot sandbox here, when no browser backend is configured, or an MCP server is not allowed), lists
MCP servers not yet listed in the conversation, and gives the harmony namespaces (system: browser, python;
developer: MCP servers) -> `run(call, req, browser)` runs one pending call (cluster/output/responses.PendingCall) and
returns its `ToolResult`.
"""

from cluster.errors import bad_request
from cluster.tools import harmony, mcp
from cluster.tools.browser import Browser, backend_of
from cluster.tools.python import PythonTool
from cluster.tools.result import ToolResult


class ToolSet:
    def __init__(self, config):
        self.config = config
        self.python = PythonTool(config.python)
        self.backend = backend_of(config.browser)

    def max_calls(self, req) -> int:
        asked = req.max_tool_calls
        return self.config.max_tool_calls if asked is None else min(asked, self.config.max_tool_calls)

    async def check(self, req) -> None:
        """400 naming the tool when this server cannot run what `req` offers the model."""
        builtin = req.builtin or {}
        if builtin.get("python"):
            why = await self.python.unavailable()
            if why:
                where = f"{builtin['python']}.type"
                raise bad_request(f"{where}: code_interpreter is not available: {why}", where,
                                  "unsupported_parameter")
        if builtin.get("browser") and self.backend is None:
            where = f"{builtin['browser']['param']}.type"
            raise bad_request(f"{where}: web_search is not available: this server has no search backend "
                              "(tools.browser.backend)", where, "unsupported_parameter")
        for server in builtin.get("mcp", []):
            check_mcp_server(self.config.mcp, server["server_url"], f"{server['param']}.server_url")

    def namespaces(self, req) -> tuple[list, list]:
        builtin = req.builtin or {}
        system = []
        if builtin.get("browser"):
            system.append(harmony.browser_namespace())
        if builtin.get("python"):
            system.append(harmony.python_namespace(self.config.python.timeout_s))
        developer = [harmony.mcp_namespace(s) for s in builtin.get("mcp", []) if s.get("tools") is not None]
        return system, developer

    async def list_unlisted(self, req):
        """(server, tools, error) for each MCP server the conversation has not listed yet; fills its tools in."""
        for server in (req.builtin or {}).get("mcp", []):
            if server.get("tools") is not None:
                continue
            try:
                server["tools"] = await mcp.list_tools(server, self.config.mcp.timeout_s)
                yield server, server["tools"], None
            except mcp.McpError as err:
                server["tools"] = []
                yield server, None, str(err)

    def browser(self, req) -> Browser | None:
        browser = (req.builtin or {}).get("browser")
        if browser is None or self.backend is None:
            return None
        return Browser(self.backend, self.config.browser, browser.get("results", 1.0))

    async def run(self, call, req, browser: Browser | None) -> ToolResult:
        if call.kind == "python":
            earlier = any((m.get("builtin_result") or {}).get("author") == "python" for m in req.messages or [])
            return await self.python.run(req.conversation or req.request_id, call.text, earlier)
        if call.kind == "browser" and browser is not None:
            return await browser.call(call.recipient.removeprefix("browser."), call.text)
        label, _, name = call.recipient.partition(".")
        server = next((s for s in (req.builtin or {}).get("mcp", []) if s["server_label"] == label), None)
        if call.kind != "mcp" or server is None:  # e.g. an unanswered built-in call in the input, its tool not offered
            return ToolResult(f"error: {call.recipient} is not a tool this request offers", True, {})
        return await mcp.call_tool(server, name, call.text, self.config.mcp.timeout_s,
                                   self.config.mcp.max_output_bytes)

    async def close(self) -> None:
        await self.python.close()


def check_mcp_server(config, url: str, param: str) -> None:
    if url not in config.allowed_servers:
        raise bad_request(f"{param}: the MCP server {url!r} is not in this server's allow-list "
                          "(tools.mcp.allowed_servers)", param, "unsupported_parameter")
