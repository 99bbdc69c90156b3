"""The browser tool: `browser.search`, `browser.open` and `browser.find` over the operator's search backend.

Flow: a response's `Browser` keeps its pages (a stack; a page's cursor is its index) -> `call(name, arguments)`:
search asks the backend (`HttpBackend`: an on-prem service answering SearxNG's JSON; `McpBackend`: an MCP server's
search and fetch tools) and shows the results as a page of links `【{id}†{title}†{domain}】`; open follows a link id
of a page (or a URL) through the backend's fetch, or scrolls a page (`loc`, `num_lines`); find lists the lines of a
page that contain a pattern -> every page is shown with numbered lines (`L{n}: ...`) under `[{cursor}] {title}`, as
gpt-oss's reference browser does, so the model can cite `【{cursor}†L{a}-L{b}】`. Errors (backend down, a bad link id)
are the tool's answer, prefixed `error:`; the response goes on.
"""

import json
import textwrap
from dataclasses import dataclass, field
from urllib.parse import urlparse

from cluster.tools import mcp
from cluster.tools.result import ToolResult


class BrowserError(Exception):
    """What the model is told went wrong."""


@dataclass
class Page:
    url: str
    title: str
    lines: list[str]
    links: dict[int, dict] = field(default_factory=dict)  # link id -> {"url", "title", "snippet"}


class HttpBackend:
    """An on-prem search service: GET search_url?q=&count=&format=json; pages through GET fetch_url?url=."""

    def __init__(self, config):
        self.config = config

    async def search(self, query: str, count: int) -> list[dict]:
        data = await self._get(self.config.search_url, {"q": query, "count": count, "format": "json"})
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise BrowserError("the search service answered without a results list")
        return [{"url": str(r.get("url", "")), "title": str(r.get("title") or r.get("url", "")),
                 "snippet": str(r.get("content") or r.get("snippet") or "")} for r in results if isinstance(r, dict)]

    async def fetch(self, url: str) -> dict | None:
        if not self.config.fetch_url:
            return None
        data = await self._get(self.config.fetch_url, {"url": url})
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise BrowserError("the fetch service answered without a text field")
        return {"url": str(data.get("url") or url), "title": str(data.get("title") or url), "text": data["text"]}

    async def _get(self, url: str, params: dict):
        import httpx  # noqa: PLC0415

        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_s) as client:
                async with client.stream("GET", url, params=params) as resp:
                    body = await _read_capped(resp, self.config.max_page_bytes)
        except httpx.HTTPError as err:
            raise BrowserError(f"the search backend failed: {type(err).__name__}: {err}") from None
        if resp.status_code != 200:
            raise BrowserError(f"the search backend answered HTTP {resp.status_code}")
        try:
            return json.loads(body)
        except ValueError:
            raise BrowserError("the search backend did not answer JSON") from None


async def _read_capped(resp, limit: int) -> bytes:
    data = bytearray()
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise BrowserError(f"the backend's answer is larger than {limit} bytes")
    return bytes(data)


class McpBackend:
    """An MCP server whose search tool takes {query, count} and fetch tool {url}; answers as JSON or text."""

    def __init__(self, config):
        self.config = config
        self.server = {"server_label": "browser", "server_url": config.mcp_server_url, "headers": {}}

    async def search(self, query: str, count: int) -> list[dict]:
        text = await self._call(self.config.mcp_search_tool, {"query": query, "count": count})
        try:
            data = json.loads(text)
        except ValueError:
            return [{"url": "", "title": f"results for {query}", "snippet": text}]
        data = data.get("results", data) if isinstance(data, dict) else data
        return [{"url": str(r.get("url", "")), "title": str(r.get("title") or r.get("url", "")),
                 "snippet": str(r.get("content") or r.get("snippet") or "")}
                for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    async def fetch(self, url: str) -> dict | None:
        text = await self._call(self.config.mcp_fetch_tool, {"url": url})
        try:
            data = json.loads(text)
        except ValueError:
            return {"url": url, "title": url, "text": text}
        return {"url": str(data.get("url") or url), "title": str(data.get("title") or url),
                "text": str(data.get("text", ""))} if isinstance(data, dict) else {"url": url, "title": url,
                                                                                  "text": text}

    async def _call(self, tool: str, args: dict) -> str:
        result = await mcp.call_tool(self.server, tool, json.dumps(args), self.config.timeout_s,
                                     self.config.max_page_bytes)
        if result.failed:
            raise BrowserError(result.text.removeprefix("error: "))
        return result.text


def backend_of(config):
    return {"http": HttpBackend, "mcp": McpBackend}[config.backend](config) if config.backend != "none" else None


class Browser:
    """One response's browsing: its pages and the backend."""

    def __init__(self, backend, config, results_fraction: float = 1.0):
        self.backend, self.config = backend, config
        self.count = max(1, round(config.max_results * results_fraction))
        self.pages: list[Page] = []

    async def call(self, name: str, arguments: str) -> ToolResult:
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("not an object")
        except ValueError:
            return ToolResult("error: the arguments must be a JSON object", True, {})
        try:
            if name == "search":
                return await self._search(args)
            if name == "open":
                return await self._open(args)
            if name == "find":
                return self._find(args)
        except BrowserError as err:
            return ToolResult(f"error: {err}", True, {})
        return ToolResult(f"error: unknown browser function {name!r} (search, open, find)", True, {})

    async def _search(self, args: dict) -> ToolResult:
        query = str(args.get("query", "")).strip()
        if not query:
            raise BrowserError("search needs a query")
        results = (await self.backend.search(query, self.count))[:self.count]
        lines, links = [], {}
        for i, r in enumerate(results):
            links[i] = r
            lines.append(f"# 【{i}†{r['title']}†{_domain(r['url'])}】")
            lines += _wrap(r["snippet"])
        page = Page("", f"Search results for `{query}`", lines or ["No results."], links)
        sources = [{"type": "url", "url": r["url"]} for r in results if r["url"]]
        return self._show(page, 0, -1, {"action": {"type": "search", "query": query, "sources": sources}})

    async def _open(self, args: dict) -> ToolResult:
        link, loc, num = args.get("id", -1), _int(args.get("loc", -1)), _int(args.get("num_lines", -1))
        if isinstance(link, str):
            page = await self._fetch({"url": link, "title": link, "snippet": ""})
        elif _int(link) >= 0:
            current = self._page(args.get("cursor", -1))
            target = current.links.get(_int(link))
            if target is None:
                raise BrowserError(f"invalid link id {link!r} on page {self.pages.index(current)}")
            page = await self._fetch(target)
        else:  # scroll the page at cursor
            page = self._page(args.get("cursor", -1))
        return self._show(page, max(loc, 0), num, {"action": {"type": "open_page", "url": page.url or None}})

    async def _fetch(self, link: dict) -> Page:
        fetched = await self.backend.fetch(link["url"]) if link["url"] else None
        if fetched is None:  # no fetch service: the search result itself
            return Page(link["url"], link["title"], _wrap(link.get("snippet") or "(this page cannot be opened here)"))
        return Page(fetched["url"], fetched["title"], [w for line in fetched["text"].splitlines() for w in _wrap(line)]
                    or [""])

    def _find(self, args: dict) -> ToolResult:
        pattern = str(args.get("pattern", "")).strip()
        if not pattern:
            raise BrowserError("find needs a pattern")
        page = self._page(args.get("cursor", -1))
        lines, links = [], {}
        for n, line in enumerate(page.lines):
            if pattern.lower() in line.lower():
                links[len(links)] = {"url": page.url, "title": f"match at L{n}", "snippet": line}
                lines += [f"# 【{len(links) - 1}†match at L{n}】", *page.lines[n:n + 4]]
        found = Page(page.url, f"Find results for text: `{pattern}` in `{page.title}`",
                     lines or [f"No `find` results for pattern: `{pattern}`"], links)
        action = {"type": "find_in_page", "pattern": pattern, "url": page.url}
        return self._show(found, 0, -1, {"action": action})

    def _page(self, cursor) -> Page:
        if not self.pages:
            raise BrowserError("no page is open yet: search first")
        cursor = _int(cursor)
        if cursor == -1:
            return self.pages[-1]
        if not 0 <= cursor < len(self.pages):
            raise BrowserError(f"cursor {cursor} is out of range: pages 0 to {len(self.pages) - 1} are open")
        return self.pages[cursor]

    def _show(self, page: Page, loc: int, num_lines: int, fields: dict) -> ToolResult:
        if page not in self.pages or page is not self.pages[-1]:
            self.pages.append(page)
        cursor = len(self.pages) - 1
        if loc >= len(page.lines):
            raise BrowserError(f"loc {loc} is past the end of the page ({len(page.lines)} lines)")
        end = min(len(page.lines), loc + (num_lines if num_lines > 0 else self.config.view_lines))
        shown = "\n".join(f"L{n}: {page.lines[n]}" for n in range(loc, end))
        head = f"[{cursor}] {page.title}" + (f" ({page.url})" if page.url else "")
        text = f"{head}\n**viewing lines [{loc} - {end - 1}] of {len(page.lines) - 1}**\n\n{shown}"
        return ToolResult(text, False, fields)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, 80) or [""]


def _domain(url: str) -> str:
    return urlparse(url).netloc or url


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
