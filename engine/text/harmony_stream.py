"""HarmonyStreamParser: turns an assistant's generated harmony tokens, one at a time, into channel text and tool calls.

Flow: the prompt ends with `<|start|>assistant`, so generation starts inside a message header -> `feed(token_id)`
returns `Delta`s (new text per channel; tool-call argument fragments carry `recipient` and `tool_call_id`) ->
`finish()` at the end of the stream flushes held-back bytes and closes an unfinished message.

This is our own state machine rather than openai-harmony's StreamableParser, which raises on unexpected tokens
and holds header-less text forever. Here nothing raises: text outside any message, a header that never ends and
unknown channels become final-channel text, and every such repair adds one to `malformed_count`. Grammar:
`[<|start|>{role}][ to={recipient}]<|channel|>{channel}[ to={recipient}][ {content_type}]<|message|>{text}`
ended by `<|end|>`, `<|call|>` (tool call) or `<|return|>` (turn done).
"""

import codecs
import re
import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from engine.text.vocab import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    VOCAB_SIZE,
)

CHANNELS = ("analysis", "commentary", "final")
MAX_HEADER_TOKENS = 48  # a real header is ~5-15 tokens; longer means the model is writing text without one
MESSAGE_END_IDS = frozenset((END, CALL, RETURN, ENDOFTEXT))
HEADER_IDS = frozenset((CHANNEL, CONSTRAIN))  # special tokens that belong inside a header
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>([^\s<]*)")


class ByteDecoder(Protocol):
    def decode_bytes(self, ids: list[int]) -> bytes: ...


@dataclass(frozen=True)
class ToolCall:
    name: str  # function name without the "functions." prefix
    arguments_json: str  # the arguments exactly as the model wrote them (JSON text, not validated)
    id: str  # "call_" + 24 hex digits, made when the call's header is parsed


@dataclass
class Delta:
    channel: str | None  # "analysis" | "commentary" | "final" (None only for a message that has no channel)
    text: str  # new text of the current message ("" on a delta that only completes a tool call)
    recipient: str | None = None  # e.g. "functions.get_weather": this text is a tool call's arguments
    tool_call_id: str | None = None  # which tool call the arguments belong to (set whenever recipient is)
    completed_tool_call: ToolCall | None = None  # set on the one delta that closes a tool call


@dataclass
class ParsedMessage:
    channel: str | None
    recipient: str | None
    content_type: str | None  # e.g. "<|constrain|>json"
    text: str


@dataclass
class _Header:
    role: str
    channel: str | None
    recipient: str | None
    content_type: str | None


class _State(Enum):
    HEADER = "header"  # collecting header tokens until <|message|>
    CONTENT = "content"  # inside a message body
    EXPECT_START = "expect_start"  # between messages: only <|start|> is well-formed here


def parse_header(text: str, role_in_header: bool) -> _Header:
    """`assistant to=functions.f<|channel|>commentary <|constrain|>json` -> role, channel, recipient, type."""
    recipient = channel = None
    if match := _RECIPIENT.search(text):
        recipient, text = match.group(1), text[: match.start()] + " " + text[match.end() :]
    if match := _CHANNEL.search(text):
        channel, text = match.group(1), text[: match.start()] + " " + text[match.end() :]
    words = text.split()
    role = words.pop(0) if role_in_header and words else "assistant"
    return _Header(role, channel, recipient, " ".join(words) or None)


@dataclass
class _Message:
    channel: str | None
    recipient: str | None
    content_type: str | None
    tool_call_id: str | None
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    parts: list[str] = field(default_factory=list)


class HarmonyStreamParser:
    """Feed generated token ids one at a time; never raises on any id sequence."""

    def __init__(self, tokenizer: ByteDecoder):
        self._tok = tokenizer
        self._state = _State.HEADER
        self._header: list[int] = []
        self._role_in_header = False  # the prompt already wrote `<|start|>assistant`
        self._msg: _Message | None = None
        self.malformed_count = 0  # repairs made: text outside messages, bad headers, stray special tokens
        self.messages: list[ParsedMessage] = []  # completed messages, in order
        self.tool_calls: list[ToolCall] = []  # completed tool calls, in order

    def feed(self, token_id: int) -> list[Delta]:
        if not 0 <= token_id < VOCAB_SIZE:
            return self._malformed()
        if self._state is _State.CONTENT:
            return self._on_content(token_id)
        if self._state is _State.HEADER:
            return self._on_header(token_id)
        return self._on_expect_start(token_id)

    def finish(self) -> list[Delta]:
        """End of stream: closes a message cut short (e.g. by max_tokens) and releases held-back text."""
        if self._state is _State.CONTENT:
            return self._close_message()
        if self._state is _State.HEADER and self._header:
            return self._header_as_message()
        return []

    # -- per-state transitions --------------------------------------------------------------------------------

    def _on_content(self, token_id: int) -> list[Delta]:
        if token_id in MESSAGE_END_IDS:
            return self._close_message()
        if token_id in (START, CHANNEL):  # a new header without closing this message
            deltas = self._malformed(self._close_message())
            self._begin_header(role_in_header=token_id == START, first=[token_id] if token_id == CHANNEL else [])
            return deltas
        if token_id >= FIRST_SPECIAL:
            return self._malformed()
        return self._text(self._tok.decode_bytes([token_id]))

    def _on_header(self, token_id: int) -> list[Delta]:
        if token_id == MESSAGE:
            self._open_message(self._parse_header())
            return []
        if token_id == START or token_id in MESSAGE_END_IDS:  # the header never reached <|message|>
            deltas = self._header_as_message()
            if token_id == START:
                self._begin_header(role_in_header=True)
            return deltas
        if token_id >= FIRST_SPECIAL and token_id not in HEADER_IDS:
            return self._malformed()
        self._header.append(token_id)
        if len(self._header) > MAX_HEADER_TOKENS or b"\n" in self._tok.decode_bytes([token_id]):
            return self._header_to_text()  # headers are short and one-line: this is text, keep streaming it
        return []

    def _on_expect_start(self, token_id: int) -> list[Delta]:
        if token_id == START:
            self._begin_header(role_in_header=True)
            return []
        if token_id == CHANNEL:  # `<|start|>assistant` left out: read the header anyway
            self._begin_header(role_in_header=False, first=[token_id])
            return self._malformed()
        if token_id >= FIRST_SPECIAL:
            return self._malformed()
        self._open_message(_Header("assistant", "final", None, None))  # text outside any message
        return self._malformed(self._text(self._tok.decode_bytes([token_id])))

    # -- helpers ----------------------------------------------------------------------------------------------

    def _malformed(self, deltas: list[Delta] | None = None) -> list[Delta]:
        self.malformed_count += 1
        return deltas or []

    def _begin_header(self, role_in_header: bool, first: list[int] | None = None) -> None:
        self._state, self._header, self._role_in_header = _State.HEADER, list(first or []), role_in_header

    def _parse_header(self) -> _Header:
        text = self._tok.decode_bytes(self._header).decode("utf-8", "replace")
        header = parse_header(text, self._role_in_header)
        if header.channel not in CHANNELS or header.role != "assistant":
            self.malformed_count += 1
        if header.channel not in CHANNELS:
            header.channel = "commentary" if header.recipient else "final"
        return header

    def _header_to_text(self) -> list[Delta]:
        """A header that never reached <|message|> was text: emit it on the final channel."""
        text_ids = [t for t in self._header if t < FIRST_SPECIAL]
        self._open_message(_Header("assistant", "final", None, None))
        return self._malformed(self._text(self._tok.decode_bytes(text_ids)))

    def _header_as_message(self) -> list[Delta]:
        """An unfinished header cut off by <|start|>, an end token or the end of the stream: a whole message."""
        deltas = self._header_to_text() + self._close_message() if self._header else self._malformed()
        self._state = _State.EXPECT_START
        return deltas

    def _open_message(self, header: _Header) -> None:
        is_call = header.recipient not in (None, "", "assistant")
        call_id = "call_" + secrets.token_hex(12) if is_call else None
        recipient = header.recipient if is_call else None
        self._msg = _Message(header.channel, recipient, header.content_type, call_id)
        self._state, self._header = _State.CONTENT, []

    def _text(self, data: bytes, final: bool = False) -> list[Delta]:
        msg = self._msg
        text = msg.decoder.decode(data, final)
        if not text:
            return []
        msg.parts.append(text)
        return [Delta(msg.channel, text, msg.recipient, msg.tool_call_id)]

    def _close_message(self) -> list[Delta]:
        deltas, msg = self._text(b"", final=True), self._msg
        self._msg, self._state = None, _State.EXPECT_START
        text = "".join(msg.parts)
        self.messages.append(ParsedMessage(msg.channel, msg.recipient, msg.content_type, text))
        if msg.tool_call_id is None:
            return deltas
        call = ToolCall(msg.recipient.removeprefix("functions."), text, msg.tool_call_id)
        self.tool_calls.append(call)
        return deltas + [Delta(msg.channel, "", msg.recipient, msg.tool_call_id, completed_tool_call=call)]
