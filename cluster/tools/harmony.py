"""How the tools the server runs appear in a harmony prompt, and how their calls and answers render.

Flow: `render_prompt(tokenizer, req messages, effort, function tools, system namespaces, developer namespaces)` ->
the engine's own `build_harmony_messages` renders the chat (functions, reasoning, tool messages, harmony's order),
with each built-in call and answer (`builtin_call` / `builtin_result` messages, cluster/protocol/response_items.py)
standing in as a placeholder user message -> the placeholders are swapped for the real harmony messages (the
assistant's message to `python` / `browser.*` / `{mcp label}.*` ending with `<|call|>`, the tool's answer authored
by that recipient, on the call's channel) -> the system message gets the `browser` and `python` namespaces and the
developer message the MCP servers' -> harmony renders the conversation for completion (it drops analysis-channel
messages, tool calls included, before the last final answer, as harmony prescribes). Inside a response the loop
appends a tool's answer with `answer_ids` (the answer and `<|start|>assistant`) to the ids already run.

This sits outside engine/ on purpose for now: it is one small function over the engine's public renderer, to move
into engine.tokenizer's build_harmony_messages when the engine's text package settles.
"""

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    Role,
    ToolDescription,
    ToolNamespaceConfig,
)

from engine.text.tokenizer import build_harmony_messages

PLACEHOLDER = "\x00gptoss-builtin-{}\x00"


def python_namespace(timeout_s: float) -> ToolNamespaceConfig:
    """harmony's python tool, described as this server runs it (a stateful session, no network)."""
    description = (
        "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. This "
        "tool should be used for internal reasoning, but not for code that is intended to be visible to the user "
        "(e.g. when creating plots, tables, or files).\n\n"
        "When you send a message containing Python code to python, it will be executed in a stateful Jupyter "
        f"notebook environment. python will respond with the output of the execution or time out after "
        f"{float(timeout_s)} seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet "
        "access for this session is disabled.")
    return ToolNamespaceConfig(name="python", description=description, tools=[])


def browser_namespace() -> ToolNamespaceConfig:
    return ToolNamespaceConfig.browser()


def mcp_namespace(server: dict) -> ToolNamespaceConfig:
    """An MCP server's listed tools (those its allowed_tools keep) as a namespace named by its server_label."""
    allowed = server.get("allowed_tools")
    tools = [ToolDescription.new(t["name"], t.get("description") or "", t.get("input_schema") or None)
             for t in server.get("tools") or [] if allowed is None or t["name"] in allowed]
    return ToolNamespaceConfig(name=server["server_label"], description=server.get("description") or None,
                               tools=tools)


def render_prompt(tokenizer, messages: list[dict], effort: str, tools: list[dict] | None,
                  system: list[ToolNamespaceConfig], developer: list[ToolNamespaceConfig]) -> list[int]:
    """Prompt ids ending with `<|start|>assistant`; raises ValueError naming the field (as render_chat)."""
    if not system and not developer and not any(_special(m) for m in messages):
        return tokenizer.render_chat(messages, reasoning_effort=effort, tools=tools)
    swaps, plain = {}, []
    for m in messages:
        if _special(m):
            key = PLACEHOLDER.format(len(swaps))
            swaps[key] = _harmony(m)
            plain.append({"role": "user", "content": key})
        else:
            plain.append(m)
    harmony = [swaps.get(_placeholder_text(h), h) for h in build_harmony_messages(plain, effort, tools)]
    harmony = _with_namespaces(harmony, system, developer)
    return tokenizer.encoding.render_conversation_for_completion(Conversation.from_messages(harmony), Role.ASSISTANT)


def answer_ids(tokenizer, recipient: str, channel: str, text: str) -> list[int]:
    """A tool's answer as harmony ids, followed by `<|start|>assistant` (the model's next message)."""
    message = _answer(recipient, channel, text)
    encoding = tokenizer.encoding
    return encoding.render(message) + encoding.render_conversation_for_completion(Conversation.from_messages([]),
                                                                                   Role.ASSISTANT)


def _special(m: dict) -> bool:
    return "builtin_call" in m or "builtin_result" in m


def _harmony(m: dict) -> Message:
    if "builtin_result" in m:
        result = m["builtin_result"]
        return _answer(result["author"], result["channel"], m.get("content") or "")
    call = m["builtin_call"]
    message = Message.from_role_and_content(Role.ASSISTANT, call["text"]).with_channel(call["channel"])
    message = message.with_recipient(call["recipient"])
    return message.with_content_type(call["content_type"]) if call.get("content_type") else message


def _answer(author: str, channel: str, text: str) -> Message:
    return Message.from_author_and_content(Author.new(Role.TOOL, author), text).with_channel(channel) \
        .with_recipient("assistant")


def _placeholder_text(message: Message) -> str | None:
    if message.author.role != Role.USER or len(message.content) != 1:
        return None
    return getattr(message.content[0], "text", None)


def _with_namespaces(harmony: list[Message], system: list, developer: list) -> list[Message]:
    """The system message with the built-in namespaces, the developer message with the MCP ones."""
    out = list(harmony)
    content = out[0].content[0]
    for namespace in system:
        content = content.with_tools(namespace)
    out[0] = Message.from_role_and_content(Role.SYSTEM, content)
    if not developer:
        return out
    has_developer = len(out) > 1 and out[1].author.role == Role.DEVELOPER
    content = out[1].content[0] if has_developer else DeveloperContent.new()
    for namespace in developer:
        content = content.with_tools(namespace)
    message = Message.from_role_and_content(Role.DEVELOPER, content)
    return out[:1] + [message] + out[2 if has_developer else 1:]
