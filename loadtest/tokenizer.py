"""Which tokenizer counts tokens: the project's o200k tokenizer when importable, else a word tokenizer.

Anything with `encode(text) -> list[int]` and `decode(ids) -> str` plugs in. The word tokenizer makes one token of
each run of non-space characters with its trailing spaces, so `encode(decode(ids)) == ids` for its own vocabulary;
on real text it approximates a BPE count, and usage reported by the server stays the authority for totals.
"""

from __future__ import annotations

import re
import zlib
from typing import Protocol

_WORD = re.compile(r"\S+\s*|\s+")

# Common English words: each is one token in o200k, so prompts made of them have about one token per word there too.
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
    "but not what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may part "
    "over new sound take only little work know place year live me back give most very after thing our just name "
    "good sentence man think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind hand picture again change "
    "off play spell air away animal house point page letter mother answer found study still learn should world"
).split()


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class WordTokenizer:
    """One token per word; ids below len(WORDS) decode to those words, unknown words hash above them."""

    name = "words"

    def __init__(self) -> None:
        self._ids = {w: i for i, w in enumerate(WORDS)}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _WORD.findall(text):
            word = piece.strip()
            if not word:
                continue
            ids.append(self._ids.get(word, len(WORDS) + zlib.crc32(word.encode()) % 100_000))
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(WORDS[i % len(WORDS)] + " " for i in ids)


def load_tokenizer(name: str = "auto") -> Tokenizer:
    """'auto': engine.text.tokenizer.Tokenizer.load() if it imports and loads, else WordTokenizer; 'words': the latter."""
    if name == "words":
        return WordTokenizer()
    if name not in ("auto", "o200k"):
        raise ValueError(f"unknown tokenizer {name!r}; use auto, o200k or words")
    try:
        from engine.text.tokenizer import Tokenizer as EngineTokenizer

        tok = EngineTokenizer.load()
        tok.encode("probe")
        return tok
    except Exception as exc:  # the engine's tokenizer is optional here; say why it is not used
        if name == "o200k":
            raise RuntimeError(f"engine.text.tokenizer could not be loaded: {exc}") from exc
        return WordTokenizer()


def tokenizer_name(tok: Tokenizer) -> str:
    return getattr(tok, "name", None) or f"{type(tok).__module__}.{type(tok).__qualname__}"

