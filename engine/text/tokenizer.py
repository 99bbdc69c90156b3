"""Tokenizer: the o200k_harmony tokenizer and the harmony chat format, on top of openai-harmony.

Flow: OpenAI-style chat messages -> `render_chat` (validated, converted to harmony messages the way vLLM's
gpt-oss path does) -> prompt ids ending with `<|start|>assistant` -> the engine generates until a stop id
(`<|return|>` or `<|call|>`) -> `parse_completion` -> analysis, final and commentary text plus tool calls.
The vocabulary file comes from `engine.text.vocab.find_vocab_dir` (offline); harmony reads it once per process.
"""

import functools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
    ToolDescription,
    load_harmony_encoding,
)

from engine.text import vocab
from engine.text.harmony_stream import Delta, HarmonyStreamParser, ToolCall

__all__ = ["ChatCompletionParse", "Tokenizer", "ToolCall"]

REASONING_EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_ENV_LOCK = threading.Lock()


@dataclass
class ChatCompletionParse:
    analysis: str = ""  # reasoning: the analysis channel, all messages concatenated
    final: str = ""  # the answer: the final channel, all messages concatenated
    tool_calls: list[ToolCall] = field(default_factory=list)  # function calls, in order
    commentary: str = ""  # commentary-channel text not addressed to a tool (preambles before tool calls)
    malformed: bool = False  # the output broke the harmony grammar; what could not be placed went to `final`


@functools.cache
def _load_encoding(model_dir: str | None, env_base: str | None, cache_root: str | None) -> HarmonyEncoding:
    """One harmony encoding per (checkpoint dir, relevant env) per process; the env args are only cache keys."""
    vocab_dir = vocab.find_vocab_dir(model_dir)
    with _ENV_LOCK:  # harmony reads TIKTOKEN_ENCODINGS_BASE while loading; set it only for that call
        old = os.environ.get(vocab.ENV_ENCODINGS_BASE)
        os.environ[vocab.ENV_ENCODINGS_BASE] = str(vocab_dir)
        try:
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        finally:
            if old is None:
                os.environ.pop(vocab.ENV_ENCODINGS_BASE)
            else:
                os.environ[vocab.ENV_ENCODINGS_BASE] = old


class Tokenizer:
    """o200k_harmony: encode/decode text, render chats to prompt ids, parse generated ids."""

    vocab_size = vocab.VOCAB_SIZE
    STARTOFTEXT, ENDOFTEXT, RETURN, CONSTRAIN = vocab.STARTOFTEXT, vocab.ENDOFTEXT, vocab.RETURN, vocab.CONSTRAIN
    CHANNEL, START, END, MESSAGE, CALL = vocab.CHANNEL, vocab.START, vocab.END, vocab.MESSAGE, vocab.CALL
    eos_token_id = vocab.RETURN

    def __init__(self, encoding: HarmonyEncoding):
        self.encoding = encoding  # the openai-harmony encoding (renders and parses harmony)
        self._bytes: dict[int, bytes] = {}  # token id -> its bytes, filled as tokens are first decoded

    @classmethod
    def load(cls, model_dir: Path | str | None = None) -> "Tokenizer":
        """Loads (once per process) with the vocabulary found by `engine.text.vocab.find_vocab_dir(model_dir)`."""
        key_dir = str(Path(model_dir).resolve()) if model_dir is not None else None
        env = os.environ.get(vocab.ENV_ENCODINGS_BASE), os.environ.get(vocab.ENV_CACHE_DIR)
        return cls(_load_encoding(key_dir, *env))

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an assistant action: `<|return|>` (answer done) and `<|call|>` (tool call)."""
        return [vocab.RETURN, vocab.CALL]

    def turn_stop_ids(self, stop_token_ids, ignore_eos: bool) -> list[int]:
        """A harmony request's stop ids: its own and the end of an assistant action, which ends a turn as eos ends a
        text; with ignore_eos (generate past the end of the turn) only its own."""
        return sorted(set(stop_token_ids or ()) | (set() if ignore_eos else set(self.stop_token_ids)))

    def is_special(self, token_id: int) -> bool:
        return token_id >= vocab.FIRST_SPECIAL

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text to ids. Special-token text such as "<|end|>" is plain text unless `allow_special`."""
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, disallowed_special=())

    def decode_bytes(self, ids) -> bytes:
        """The exact bytes of `ids` (special tokens as their text); raises ValueError on an id outside the vocab."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < vocab.VOCAB_SIZE]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab.VOCAB_SIZE})")
        return b"".join(map(self._token_bytes, ids))  # a sequence's bytes are its tokens' bytes, concatenated

    def _token_bytes(self, token_id: int) -> bytes:
        """One token's bytes, from harmony once (surrogateescape round-trips any bytes through its str API)."""
        data = self._bytes.get(token_id)
        if data is None:
            data = self.encoding.decode([token_id], errors="surrogateescape").encode("utf-8", "surrogateescape")
            self._bytes[token_id] = data
        return data

    def decode(self, ids) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", "replace")

    def render_chat(self, messages: list[dict], reasoning_effort: str = "medium", tools: list[dict] | None = None
                    ) -> list[int]:
        """OpenAI chat messages (and function tools) -> harmony prompt ids ending with `<|start|>assistant`.

        Raises ValueError naming the offending field.
        """
        harmony = build_harmony_messages(messages, reasoning_effort, tools)
        return self.encoding.render_conversation_for_completion(Conversation.from_messages(harmony), Role.ASSISTANT)

    def stream_parser(self) -> HarmonyStreamParser:
        return HarmonyStreamParser(self)

    def parse_completion(self, token_ids) -> ChatCompletionParse:
        """Generated ids (after the prompt's `<|start|>assistant`, stop id included or not) -> parts. Never raises."""
        parser = self.stream_parser()
        deltas = [d for t in token_ids for d in parser.feed(int(t))] + parser.finish()
        parse = collect_deltas(deltas)
        parse.tool_calls, parse.malformed = list(parser.tool_calls), parser.malformed_count > 0
        return parse


def collect_deltas(deltas: list[Delta]) -> ChatCompletionParse:
    """Concatenates stream deltas per channel (tool-call arguments are not text)."""
    parts: dict[str, list[str]] = {"analysis": [], "final": [], "commentary": []}
    for delta in deltas:
        if delta.recipient is None and delta.channel in parts:
            parts[delta.channel].append(delta.text)
    return ChatCompletionParse(**{channel: "".join(texts) for channel, texts in parts.items()})


# -- OpenAI chat -> harmony messages ------------------------------------------------------------------------------


def build_harmony_messages(messages: list[dict], reasoning_effort: str = "medium", tools: list[dict] | None = None
                           ) -> list[Message]:
    """System message (reasoning effort), developer message (leading system/developer text + tools), then the chat.

    As in vLLM: the leading system/developer messages become the developer instructions (a later one becomes a
    developer message in place); assistant tool calls go to `functions.{name}` on the commentary channel; earlier
    turns' reasoning is dropped once a later final answer exists. No conversation date is added, so the same chat
    always renders to the same ids.
    """
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {list(REASONING_EFFORTS)}, got {reasoning_effort!r}")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of chat messages, got {messages!r}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            role = msg.get("role") if isinstance(msg, dict) else msg
            raise ValueError(f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
    n_lead = next((i for i, m in enumerate(messages) if m["role"] not in ("system", "developer")), len(messages))
    instructions = "\n\n".join(_text(f"messages[{i}].content", messages[i].get("content")) for i in range(n_lead))
    system = SystemContent.new().with_reasoning_effort(REASONING_EFFORTS[reasoning_effort])
    out = [Message.from_role_and_content(Role.SYSTEM, system)]
    if instructions or tools:
        out.append(_developer_message(instructions, tools))
    names = _tool_call_names(messages)
    for i in range(n_lead, len(messages)):
        out += _convert(i, messages[i], names)
    return _drop_old_analysis(out)


def _text(field_name: str, content) -> str:
    """A message's content: a string, None, or a list of {"type": "text", "text": ...} parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ValueError(f"{field_name} must be a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValueError(f"{field_name}[{j}] must be {{'type': 'text', 'text': str}} (only text is supported), "
                             f"got {part!r}")
        texts.append(part["text"])
    return "".join(texts)


def _developer_message(instructions: str, tools: list[dict] | None) -> Message:
    content = DeveloperContent.new()
    if instructions:
        content = content.with_instructions(instructions)
    if tools:
        content = content.with_function_tools(_tool_descriptions(tools))
    return Message.from_role_and_content(Role.DEVELOPER, content)


def _tool_descriptions(tools: list[dict]) -> list[ToolDescription]:
    """OpenAI `tools` ([{"type": "function", "function": {name, description, parameters}}]) -> harmony's."""
    if not isinstance(tools, (list, tuple)):
        raise ValueError(f"tools must be a list of function tools, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ValueError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}, got {tool!r}')
        name, description = fn.get("name"), fn.get("description") or ""
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ValueError(f"tools[{i}].function.name must match {TOOL_NAME.pattern}, got {name!r}")
        if not isinstance(description, str):
            raise ValueError(f"tools[{i}].function.description must be a string, got {description!r}")
        out.append(ToolDescription.new(name, description, _check_schema(f"tools[{i}].function.parameters",
                                                                       fn.get("parameters"))))
    return out


def _check_schema(field_name: str, schema) -> dict | None:
    """A JSON-Schema object for the arguments: a dict whose `properties` is a dict and `required` a list."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise ValueError(f"{field_name} must be a JSON Schema object (a dict), got {type(schema).__name__}")
    if not isinstance(schema.get("properties", {}), dict):
        raise ValueError(f"{field_name}.properties must be an object mapping names to schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"{field_name}.required must be a list of property names, got {required!r}")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field_name} must be JSON-serializable: {err}") from None
    return schema


def _tool_call_names(messages: list[dict]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant messages' tool_calls (tool messages name no function)."""
    names = {}
    for msg in messages:
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[call.get("id")] = call["function"].get("name")
    return names


def _convert(i: int, msg: dict, names: dict[str, str]) -> list[Message]:
    role = msg["role"]
    if role == "assistant":
        return _assistant(i, msg)
    text = _text(f"messages[{i}].content", msg.get("content"))
    if role == "tool":
        name = msg.get("name") or names.get(msg.get("tool_call_id"))
        if not name:
            raise ValueError(f"messages[{i}].tool_call_id must match an earlier assistant tool call "
                             f"(or give messages[{i}].name), got {msg.get('tool_call_id')!r}")
        author = Author.new(Role.TOOL, f"functions.{name}")
        return [Message.from_author_and_content(author, text).with_channel("commentary").with_recipient("assistant")]
    return [Message.from_role_and_content(Role.DEVELOPER if role == "system" else Role(role), text)]


def _assistant(i: int, msg: dict) -> list[Message]:
    """reasoning -> analysis; content -> final (or a commentary preamble when it comes with tool calls); calls."""
    out = []
    reasoning = msg.get("reasoning") or msg.get("reasoning_content")
    if reasoning:
        out.append(Message.from_role_and_content(Role.ASSISTANT, str(reasoning)).with_channel("analysis"))
    text, calls = _text(f"messages[{i}].content", msg.get("content")), msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ValueError(f"messages[{i}].tool_calls must be a list, got {type(calls).__name__}")
    if text:
        channel = "commentary" if calls else "final"
        out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel))
    return out + [_tool_call(f"messages[{i}].tool_calls[{j}]", call) for j, call in enumerate(calls)]


def _tool_call(field_name: str, call) -> Message:
    fn = call.get("function") if isinstance(call, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{field_name}.function.name must be a non-empty string, got {name!r}")
    args = fn.get("arguments") or ""
    args = args if isinstance(args, str) else json.dumps(args)
    msg = Message.from_role_and_content(Role.ASSISTANT, args).with_channel("commentary")
    return msg.with_recipient(f"functions.{name}").with_content_type("<|constrain|>json")


def _drop_old_analysis(msgs: list[Message]) -> list[Message]:
    """Drops analysis messages before the last final answer: later turns do not see earlier reasoning."""
    finals = [i for i, m in enumerate(msgs) if m.author.role == Role.ASSISTANT and m.channel == "final"]
    if not finals:
        return msgs
    return [m for i, m in enumerate(msgs) if not (i < finals[-1] and m.channel == "analysis")]
