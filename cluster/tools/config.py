"""The `tools:` section of the cluster config: the built-in tools the server runs for the Responses API."""

from typing import Literal

from pydantic import model_validator

from cluster.sections import Section, doc


class PythonToolConfig(Section):
    """The `python` tool (Responses `code_interpreter`): code runs in a bubblewrap sandbox per conversation."""

    enabled: bool = doc(False, "offer python to the model when a request lists a code_interpreter tool (needs "
                               "bubblewrap, `bwrap`, on the replicas' nodes)")
    interpreter: str | None = doc(None, "the Python inside the sandbox, under /usr (None: /usr/local/bin/python3 or "
                                        "/usr/bin/python3)")
    timeout_s: float = doc(30.0, "wall-clock seconds one call may run; past it the session is stopped", gt=0)
    cpu_s: int = doc(120, "CPU seconds a session may use in all (RLIMIT_CPU)", ge=1)
    memory_bytes: int = doc(1 << 30, "address space of a session's processes (RLIMIT_AS)", ge=64 << 20)
    max_processes: int = doc(16, "processes and threads a session may run at once (RLIMIT_NPROC in its own user "
                                 "namespace)", ge=2)
    max_output_bytes: int = doc(64 << 10, "output of one call kept for the model and the client; the rest is dropped "
                                          "and said so", ge=256)
    scratch_bytes: int = doc(64 << 20, "size of the session's private writable /mnt/data and /tmp (tmpfs)",
                             ge=1 << 20)
    max_sessions: int = doc(32, "live sessions per replica (the least recently used is stopped first)", ge=1)
    idle_timeout_s: float = doc(600.0, "a session unused this long is stopped (its state is lost)", gt=0)
    sandbox_uid: int = doc(65534, "when the server runs as root: the uid the sandbox runs as (nobody)", ge=1)


class BrowserToolConfig(Section):
    """The `browser` tool (Responses `web_search`): search, open and find over a configured backend."""

    backend: Literal["none", "http", "mcp"] = doc(
        "none", "none (the tool is not offered), http (an on-prem search service: search_url, fetch_url) or mcp (an "
                "MCP server's search and fetch tools: mcp_server_url)")
    search_url: str | None = doc(None, "http backend: GET search_url?q=QUERY&count=N&format=json answers "
                                       "{\"results\": [{\"url\", \"title\", \"content\"}]} (SearxNG's shape)")
    fetch_url: str | None = doc(None, "http backend: GET fetch_url?url=URL answers {\"url\", \"title\", \"text\"} "
                                      "(None: browser.open shows only search results, never fetches a page)")
    mcp_server_url: str | None = doc(None, "mcp backend: the MCP server (streamable HTTP)")
    mcp_search_tool: str = doc("search", "mcp backend: the tool called with {query, count}", min_length=1)
    mcp_fetch_tool: str = doc("fetch", "mcp backend: the tool called with {url}", min_length=1)
    max_results: int = doc(10, "search results shown to the model", ge=1, le=50)
    view_lines: int = doc(60, "lines of a page shown per open", ge=5)
    max_page_bytes: int = doc(2 << 20, "largest page or answer read from the backend", ge=1024)
    timeout_s: float = doc(15.0, "seconds one backend request may take", gt=0)

    @model_validator(mode="after")
    def _backend_named(self) -> "BrowserToolConfig":
        if self.backend == "http" and not self.search_url:
            raise ValueError("search_url is required with backend http")
        if self.backend == "mcp" and not self.mcp_server_url:
            raise ValueError("mcp_server_url is required with backend mcp")
        return self


class McpConfig(Section):
    """MCP tools a request names ({"type": "mcp", "server_url", ...}): only servers listed here are reached."""

    allowed_servers: list[str] = doc([], "server URLs requests may name (exact match); empty: MCP tools are refused")
    timeout_s: float = doc(30.0, "seconds one MCP request (list or call) may take", gt=0)
    max_output_bytes: int = doc(64 << 10, "a tool's output kept for the model and the client", ge=256)


class ToolsConfig(Section):
    """Built-in tools the replicas run inside a response: the model calls, the server answers, generation goes on."""

    max_tool_calls: int = doc(16, "built-in and MCP tool calls per response at most (a request's max_tool_calls may "
                                  "lower it)", ge=1)
    python: PythonToolConfig = doc(PythonToolConfig, "the python tool (code_interpreter)")
    browser: BrowserToolConfig = doc(BrowserToolConfig, "the browser tool (web_search)")
    mcp: McpConfig = doc(McpConfig, "MCP servers requests may use")
