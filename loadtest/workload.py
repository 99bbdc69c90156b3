"""What is sent: sessions of one or more turns, synthetic (exact token lengths, shared prefixes) or from a JSONL file.

Every request belongs to a session; a single-turn request is a session of one turn. Turn k+1 of a session is sent
when turn k has finished, with the answer of turn k in its history (the runner keeps the history).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.tokenizer import WORDS, Tokenizer


@dataclass(frozen=True)
class Distribution:
    """Integer lengths: 'N' (fixed), 'uniform:LO:HI' (inclusive), 'normal:MEAN:STD', 'lognormal:MEDIAN:SIGMA'.
    Draws are rounded and clipped to at least 1."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str | int) -> Distribution:
        parts = str(spec).split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(parts[0]))
            if parts[0] in ("uniform", "normal", "lognormal") and len(parts) == 3:
                return cls(parts[0], float(parts[1]), float(parts[2]))
        except ValueError:
            pass
        raise ValueError(f"bad length distribution {spec!r}; use N, uniform:LO:HI, normal:MEAN:STD or "
                         f"lognormal:MEDIAN:SIGMA")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            v = self.a
        elif self.kind == "uniform":
            v = rng.randint(int(self.a), int(self.b))
        elif self.kind == "normal":
            v = rng.gauss(self.a, self.b)
        else:
            v = math.exp(rng.gauss(math.log(self.a), self.b))
        return max(1, round(v))

    def __str__(self) -> str:
        return f"{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"


@dataclass
class Turn:
    text: str                  # the user's new text for this turn ('' when `messages` carries it)
    max_tokens: int            # sent as max_tokens
    input_tokens: int          # tokens of `text` (or `messages` contents) by the load tester's tokenizer
    messages: list[dict] | None = None   # a whole messages list from a prompts file, used as the history prefix


@dataclass
class Session:
    session_id: str
    turns: list[Turn]
    group: int = -1            # shared-prefix group, -1 when prefixes are not shared


@dataclass
class WorkloadSpec:
    input_len: str = "512"     # tokens of new user text per turn (after the shared prefix)
    output_len: str = "128"    # max_tokens per turn
    prefix_groups: int = 0     # sessions are spread round-robin over this many groups sharing a first-turn prefix
    prefix_len: int = 0        # tokens in each group's shared prefix
    turns: int = 1             # turns per synthetic session
    prompts_file: str | None = None   # JSONL: {"prompt"| "messages" | "turns": ..., "max_tokens"?: N} per line
    seed: int = 0

    def __post_init__(self) -> None:
        Distribution.parse(self.input_len), Distribution.parse(self.output_len)
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        if (self.prefix_groups > 0) != (self.prefix_len > 0):
            raise ValueError("set both --prefix-groups and --prefix-len (or neither)")


def text_of_length(tok: Tokenizer, n: int, rng: random.Random) -> str:
    """Random common words that encode to exactly n tokens (adjusted by truncating or extending, re-encoded)."""
    text = " ".join(rng.choices(WORDS, k=n))
    for _ in range(8):
        ids = tok.encode(text)
        if len(ids) == n:
            return text
        if len(ids) > n:
            text = tok.decode(ids[:n])
        else:
            text += " " + " ".join(rng.choices(WORDS, k=n - len(ids)))
    raise ValueError(f"could not make a prompt of exactly {n} tokens with {type(tok).__name__}")


class Workload:
    """An endless source of sessions; `next_session(sid)` is deterministic in (seed, call order)."""

    def __init__(self, spec: WorkloadSpec, tok: Tokenizer, seed_offset: int = 0) -> None:
        self.spec, self.tok = spec, tok
        self.rng = random.Random(spec.seed * 1_000_003 + seed_offset)
        self.input_len = Distribution.parse(spec.input_len)
        self.output_len = Distribution.parse(spec.output_len)
        prefix_rng = random.Random(spec.seed)   # the same prefixes in every generator process
        self.prefixes = [text_of_length(tok, spec.prefix_len, prefix_rng) for _ in range(spec.prefix_groups)]
        self.file_items = load_prompts(spec.prompts_file) if spec.prompts_file else None
        self.count = 0

    def next_session(self, session_id: str) -> Session:
        self.count += 1
        if self.file_items is not None:
            return self._from_file(session_id, self.file_items[(self.count - 1) % len(self.file_items)])
        group = (self.count - 1) % len(self.prefixes) if self.prefixes else -1
        turns = [self._synthetic_turn(self.prefixes[group] if group >= 0 and k == 0 else "")
                 for k in range(self.spec.turns)]
        return Session(session_id, turns, group)

    def _synthetic_turn(self, prefix: str) -> Turn:
        text = text_of_length(self.tok, self.input_len.sample(self.rng), self.rng)
        if prefix:
            text = prefix + " " + text
        return Turn(text, self.output_len.sample(self.rng), len(self.tok.encode(text)))

    def _from_file(self, session_id: str, item: dict) -> Session:
        max_tokens = item.get("max_tokens") or self.output_len.sample(self.rng)
        if "messages" in item:
            n = sum(len(self.tok.encode(str(m.get("content", "")))) for m in item["messages"])
            return Session(session_id, [Turn("", max_tokens, n, messages=item["messages"])])
        texts = item["turns"] if "turns" in item else [item["prompt"]]
        return Session(session_id, [Turn(t, max_tokens, len(self.tok.encode(t))) for t in texts])


def load_prompts(path: str | Path) -> list[dict]:
    """Reads a JSONL prompts file; each line has one of prompt (str), messages (list) or turns (list of str)."""
    items = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc
        if not isinstance(item, dict) or not ({"prompt", "messages", "turns"} & item.keys()):
            raise ValueError(f"{path}:{lineno}: each line needs a 'prompt', 'messages' or 'turns' key")
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no prompts found")
    return items


@dataclass
class History:
    """The chat history of one session as it runs: messages so far (user and assistant)."""

    messages: list[dict] = field(default_factory=list)

    def request_messages(self, turn: Turn) -> list[dict]:
        if turn.messages is not None:
            return self.messages + list(turn.messages)
        return self.messages + [{"role": "user", "content": turn.text}]

    def add(self, sent: list[dict], answer: str) -> None:
        self.messages = sent + [{"role": "assistant", "content": answer}]

    def prompt_text(self, turn: Turn) -> str:
        """The completions-API prompt: previous turns' text and answers, then this turn's text."""
        return "".join(str(m.get("content", "")) + "\n" for m in self.request_messages(turn))
