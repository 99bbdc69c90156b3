"""/v1/responses, stateless: input items -> chat messages, and harmony output -> output items or streaming events.

Nothing is stored: `previous_response_id` is refused and `store` is reported false; a multi-turn conversation
sends its earlier items (messages, reasoning, function_call, function_call_output) again as input.
Output items in order: `reasoning` (analysis channel), `message` (final channel), `function_call` (commentary to
`functions.*`). Streaming emits the Responses event sequence (created, output_item.added, *.delta, *.done,
completed) with increasing `sequence_number`.
"""

import json
import secrets
import time

from cluster.errors import bad_request

_ROLES = ("user", "system", "developer", "assistant")


def input_to_messages(items, instructions: str | None) -> list[dict]:
    """Responses `input` (a string or items) and `instructions` -> OpenAI chat messages."""
    messages = [{"role": "developer", "content": instructions}] if instructions else []
    if isinstance(items, str):
        if not items:
            raise bad_request("input must be a non-empty string or list of items", "input")
        return messages + [{"role": "user", "content": items}]
    if not items:
        raise bad_request("input must be a non-empty string or list of items", "input")
    for i, item in enumerate(items):
        messages += _item(f"input[{i}]", item, messages)
    return messages


def _item(where: str, item: dict, earlier: list[dict]) -> list[dict]:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise bad_request(f"{where}.role must be one of {list(_ROLES)}, got {role!r}", f"{where}.role")
        return [{"role": role, "content": _content(f"{where}.content", item.get("content"))}]
    if kind == "reasoning":
        parts = item.get("content") or item.get("summary") or []
        text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
        return [{"role": "assistant", "reasoning_content": text, "content": None}] if text else []
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise bad_request(f"{where}.{key} must be a string", f"{where}.{key}")
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise bad_request(f"{where}.call_id must be a string", f"{where}.call_id")
        output = item.get("output")
        return [{"role": "tool", "tool_call_id": item["call_id"],
                 "content": output if isinstance(output, str) else json.dumps(output)}]
    raise bad_request(f"{where}.type {kind!r} is not supported (message, reasoning, function_call, "
                      "function_call_output)", f"{where}.type")


def _content(where: str, content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{j}] must be {{'type': 'input_text', 'text': str}} (only text is supported)",
                              f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)
