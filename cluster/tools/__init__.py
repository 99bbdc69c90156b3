"""Built-in tools the replicas run for the Responses API: python (a bubblewrap sandbox per conversation), browser
(search / open / find over a configured backend) and MCP servers from an allow-list. Modules: config (the `tools:`
section), harmony (how tools and their calls render in the prompt), sandbox, python, browser, mcp, toolset (what a
request may use), loop (generation with the tools in between)."""
