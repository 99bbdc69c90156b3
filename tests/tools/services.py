"""Small local services the tool tests run: a search service (SearxNG's JSON shape, plus a fetch endpoint) in a
thread, and an MCP server (the mcp SDK's MCPServer over streamable HTTP) in a subprocess."""

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PAGES = {
    "https://docs.example.org/bwrap": ("Bubblewrap notes", "Bubblewrap builds sandboxes from namespaces.\n"
                                       "The answer to the riddle is 1729, the taxicab number.\n"
                                       "Unprivileged user namespaces must be allowed."),
    "https://docs.example.org/harmony": ("Harmony format", "Messages have channels: analysis, commentary, final."),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def search_service():
    """Yields (base URL, the list of requests it received)."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            seen.append((url.path, q))
            if url.path == "/search":
                body = {"results": [{"url": u, "title": t, "content": text.splitlines()[0]}
                                    for u, (t, text) in PAGES.items() if q.get("q", "").lower() in (t + text).lower()
                                    or q.get("q") == "*"]}
            elif url.path == "/fetch" and q.get("url") in PAGES:
                title, text = PAGES[q["url"]]
                body = {"url": q["url"], "title": title, "text": text}
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


MCP_SERVER = """
import sys
from mcp.server.mcpserver import MCPServer

server = MCPServer("gptoss-test")

@server.tool()
def add(a: int, b: int) -> int:
    "Adds two integers."
    return a + b

@server.tool()
def shout(text: str) -> str:
    "Upper-cases text."
    return text.upper()

@server.tool()
def fail(reason: str) -> str:
    "Always fails."
    raise ValueError(reason)

server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
"""


@contextlib.contextmanager
def mcp_server():
    """Yields the URL of a local MCP server with tools add, shout and fail."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", MCP_SERVER, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the MCP server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()
