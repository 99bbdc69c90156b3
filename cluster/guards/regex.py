"""The regex / PII filter: e-mail addresses, phone numbers, card numbers (Luhn-checked) and the operator's patterns.

Flow: `RegexFilter.find(text)` runs the operator's patterns, then card, e-mail and phone (earlier ones win where two
overlap); a card candidate counts only with 13-19 digits that pass the Luhn check, a phone candidate only with 8-15
digits (E.164's most) that is not a date -> input: each match is redacted (`[REDACTED:<pattern>]`) or blocks the
request, as the pattern's or the filter's action says -> output: a match that reaches into the unchecked text ends
the answer. `redact(text)` is also what the audit log uses when it keeps text.
"""

import re
from dataclasses import dataclass

from cluster.guards import ALLOW, TextField, Verdict

CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d])")
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}(?![\w])")
DATE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4})$")  # not a phone number
OVERLAP = 64  # characters of checked text re-scanned on output, so a match spanning two windows is found


def luhn(digits: str) -> bool:
    """The Luhn checksum (ISO/IEC 7812) of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and luhn(digits)


def _phone(text: str) -> bool:
    return 8 <= sum(c.isdigit() for c in text) <= 15 and not DATE.match(text)


@dataclass
class Pattern:
    name: str
    regex: re.Pattern
    action: str  # "redact" | "block"
    accept: object = None  # a check on the matched text (Luhn, digit count); None: every match counts


@dataclass
class Match:
    start: int
    end: int
    pattern: Pattern


class RegexFilter:
    timeout_s = None  # pure computation: it cannot hang
    on_error = "block"
    every_tokens = None  # runs on every window

    def __init__(self, name: str, spec):
        self.name = name
        self.patterns = [Pattern(p.name, re.compile(p.regex), p.action or spec.action) for p in spec.patterns]
        builtin = {"card": Pattern("card", CARD, spec.action, _card), "email": Pattern("email", EMAIL, spec.action),
                   "phone": Pattern("phone", PHONE, spec.action, _phone)}
        self.patterns += [builtin[name] for name in ("card", "email", "phone") if name in spec.builtin]

    def find(self, text: str, start: int = 0) -> list[Match]:
        """Non-overlapping matches at or after `start`, in text order (earlier patterns win an overlap)."""
        taken: list[Match] = []
        for pattern in self.patterns:
            for m in pattern.regex.finditer(text, start):
                if pattern.accept is not None and not pattern.accept(m.group()):
                    continue
                if not any(m.start() < t.end and t.start < m.end() for t in taken):
                    taken.append(Match(m.start(), m.end(), pattern))
        return sorted(taken, key=lambda t: t.start)

    def redact(self, text: str) -> str:
        """`text` with every match replaced by [REDACTED:<pattern>] (whatever the patterns' actions)."""
        return _replace(text, self.find(text))

    async def check_input(self, fields: list[TextField]) -> Verdict:
        texts, changed = [], []
        for f in fields:
            matches = self.find(f.text)
            blocking = next((m for m in matches if m.pattern.action == "block"), None)
            if blocking is not None:
                return Verdict("block", f"pattern {blocking.pattern.name!r}", f.param)
            texts.append(_replace(f.text, matches))
            changed += sorted({m.pattern.name for m in matches})
        if not changed:
            return ALLOW
        return Verdict("redact", "patterns " + ", ".join(repr(n) for n in sorted(set(changed))), texts=texts)

    async def check_output(self, answer: str, new_from: int, final: bool) -> Verdict:
        for m in self.find(answer, max(0, new_from - OVERLAP)):
            if m.end > new_from:
                return Verdict("block", f"pattern {m.pattern.name!r}")
        return ALLOW


def _replace(text: str, matches: list[Match]) -> str:
    out, at = [], 0
    for m in matches:
        out += [text[at:m.start], f"[REDACTED:{m.pattern.name}]"]
        at = m.end
    return "".join(out) + text[at:]
