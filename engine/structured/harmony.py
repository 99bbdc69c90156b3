"""HarmonyConstraint: one request's constraint as it follows the request's tokens, on the rank that samples it.

Flow: the worker makes one per constrained request when it first sees it (`HarmonyConstraint.of`), then each step
`fill(bitmask_row)` writes the tokens allowed next (xgrammar's int32 layout: bit t % 32 of word t // 32 is token t)
and `accept(token)` moves it on by the token sampled. It depends on the request's tokens and nothing else, so
preemption (the KV is recomputed, the tokens stay), async scheduling (tokens are accepted as they are sampled),
n > 1 (one per sample) and prefix caching leave it right.

The harmony turn (the prompt ends with `<|start|>assistant`), matched token by token so special tokens are always
the special ids (a grammar over text could spell `<|end|>` out of plain tokens):
  header, one of (a trie walk over the token sequences):
    `<|channel|>analysis<|message|>` -> free text, at most `reasoning_budget` tokens, then `<|end|>` (forced once the
        budget is spent) -> a header again, analysis no longer offered
    `<|channel|>final<|message|>` -> the `final` grammar -> `<|return|>`
    `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>` -> NAME's grammar -> `<|call|>`
    `<|channel|>analysis to=python code<|message|>` (a built-in tool offered) -> free text -> `<|call|>`
  every header after the first starts with `<|start|>assistant`. Without harmony the whole output is the `final`
  grammar, ended by one of the request's stop ids.
"""

import functools
import logging
from dataclasses import dataclass

import numpy as np

from engine.structured.grammar import compiler_for
from engine.structured.params import Grammar, StructuredOutputs
from engine.text import vocab as V

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alternative:
    """One message the turn may go on with."""

    header: tuple[int, ...]  # its header's token ids
    grammar: Grammar | None  # its content; None: the analysis message (free text within the reasoning budget)
    end: tuple[int, ...]  # the token ids that end it


class HarmonyVocab:
    """Per vocabulary: the free-text bitmask row and the header token sequences."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.words = (vocab_size + 31) // 32  # W: int32 words per bitmask row
        self.free_row = bits(self.words, range(min(V.FIRST_SPECIAL, vocab_size)))  # every ordinary token

    def header(self, text: str, first: bool) -> tuple[int, ...]:
        start = [] if first else [V.START, *self.tokenizer.encode("assistant")]
        return tuple(start + self.tokenizer.encode(text, allow_special=True))

    def alternatives(self, spec: StructuredOutputs, first: bool, analysis: bool) -> list[Alternative]:
        alts = []
        if analysis:
            alts.append(Alternative(self.header("<|channel|>analysis<|message|>", first), None, (V.END,)))
        if spec.final is not None:
            alts.append(Alternative(self.header("<|channel|>final<|message|>", first), spec.final, (V.RETURN,)))
        for name, grammar in spec.functions:
            text = f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            alts.append(Alternative(self.header(text, first), grammar, (V.CALL,)))
        for recipient in spec.builtins:  # harmony's built-in tools: analysis channel, "code" content
            text = f"<|channel|>analysis to={recipient} code<|message|>"
            alts.append(Alternative(self.header(text, first), Grammar("text"), (V.CALL,)))
        return alts


@functools.lru_cache(maxsize=4)
def harmony_vocab(tokenizer, vocab_size: int) -> HarmonyVocab:
    return HarmonyVocab(tokenizer, vocab_size)


def bits(words: int, ids) -> np.ndarray:
    """A bitmask row [W] (uint32) with the bits of `ids` set."""
    ids = np.fromiter(ids, dtype=np.int64)
    row = np.zeros(words * 32, dtype=bool)
    row[ids] = True
    return np.packbits(row.reshape(words, 32)[:, ::-1], axis=1).view(">u4").astype(np.uint32).reshape(words)


def set_bits(row: np.ndarray, ids) -> None:
    """In place on a uint32 row."""
    for t in ids:
        row[t >> 5] |= np.uint32(1 << (t & 31))


def fill_rows(constraints: list["HarmonyConstraint"], rows: list[int], mask: np.ndarray, batch_matcher) -> None:
    """Fill `mask` ([S, W] uint32) at `rows`, one per constraint: the grammar rows by xgrammar's batched fill (its
    threads, without the GIL), then every row's own adjustments."""
    grammar = [(i, c.grammar_matcher) for i, c in zip(rows, constraints) if c.grammar_matcher is not None]
    if grammar:
        import torch  # noqa: PLC0415

        batch_matcher.batch_fill_next_token_bitmask([m for _, m in grammar], torch.from_numpy(mask.view(np.int32)),
                                                    [i for i, _ in grammar])
    for i, c in zip(rows, constraints):
        c.fill(mask[i])


def accept_rows(constraints: list["HarmonyConstraint"], tokens: list[int], batch_matcher) -> None:
    """`accept` for each (constraint, sampled token), the tokens inside grammars through one batched call."""
    grammar = [(c, t) for c, t in zip(constraints, tokens) if c.grammar_matcher is not None and t not in c.body.end]
    if grammar:
        accepted = batch_matcher.batch_accept_token([c.matcher for c, _ in grammar], [t for _, t in grammar])
        for (c, t), ok in zip(grammar, accepted):
            if not ok:
                c._fail(t)
    inside = {id(c) for c, _ in grammar}
    for c, t in zip(constraints, tokens):
        if id(c) not in inside:
            c.accept(t)


class HarmonyConstraint:
    """The state of one request's constraint; see the module docstring."""

    def __init__(self, spec: StructuredOutputs, hv: HarmonyVocab, reasoning_budget: int | None,
                 stop_ids: tuple[int, ...]):
        self.spec, self.hv = spec, hv
        self.budget = reasoning_budget  # None: no limit on the analysis message
        self.compiler = compiler_for(hv.tokenizer, hv.vocab_size)
        self.failed = False  # a token the constraint did not allow came (it is then lifted, never crashing a step)
        self.done = False
        self.reasoning_tokens = 0
        self.body: Alternative | None = None  # the message being written, None while in a header
        self.matcher = None  # the body's xgrammar matcher (None for free text)
        if spec.harmony:
            self._open_header(first=True, analysis=reasoning_budget != 0)
        else:
            self._open_body(Alternative((), spec.final, stop_ids))

    @classmethod
    def of(cls, spec: StructuredOutputs, tokenizer, vocab_size: int, reasoning_budget: int | None,
           stop_ids: list[int]) -> "HarmonyConstraint":
        return cls(spec, harmony_vocab(tokenizer, vocab_size), reasoning_budget, tuple(stop_ids))

    @property
    def active(self) -> bool:
        return not (self.done or self.failed)

    # ---- states ----
    def _open_header(self, first: bool, analysis: bool) -> None:
        self.body, self.matcher, self.pos = None, None, 0
        self.candidates = self.hv.alternatives(self.spec, first, analysis)

    def _open_body(self, alt: Alternative) -> None:
        self.body, self.pos = alt, 0
        self.matcher = None if alt.grammar is None or alt.grammar.free else self.compiler.matcher(alt.grammar)

    # ---- per step ----
    @property
    def grammar_matcher(self):
        """The xgrammar matcher that fills this row next (`fill_rows` runs them batched), or None."""
        return self.matcher if self.active and self.body is not None else None

    def fill(self, row: np.ndarray) -> None:
        """Write the allowed next tokens into `row` ([W] uint32, a view of the step's bitmask); a row with a grammar
        matcher has been filled by it already (fill_rows) and is only adjusted here."""
        if not self.active:
            row[:] = 0xFFFFFFFF
        elif self.body is None:
            row[:] = 0
            set_bits(row, {alt.header[self.pos] for alt in self.candidates})
        elif self.body.grammar is None and self.budget is not None and self.reasoning_tokens >= self.budget:
            row[:] = 0
            set_bits(row, self.body.end)
        elif self.matcher is None:
            row[:] = self.hv.free_row
            set_bits(row, self.body.end)
        else:
            self._fill_grammar(row)

    def _fill_grammar(self, row: np.ndarray) -> None:
        for t in self.compiler.stop_token_ids:  # xgrammar allows its stop ids once the grammar can end: this
            row[t >> 5] &= ~np.uint32(1 << (t & 31))  # body's own end ids instead
        if self.matcher.is_completed():
            set_bits(row, self.body.end)

    def accept(self, token: int) -> None:
        """Move on by the token sampled for the request."""
        if not self.active:
            return
        if self.body is None:
            self._accept_header(token)
        elif token in self.body.end:
            self._end_body()
        elif self.matcher is not None:
            if not self.matcher.accept_token(token):
                self._fail(token)
        elif token >= V.FIRST_SPECIAL:
            self._fail(token)
        elif self.body.grammar is None:
            self.reasoning_tokens += 1

    def _accept_header(self, token: int) -> None:
        self.candidates = [a for a in self.candidates if a.header[self.pos] == token]
        self.pos += 1
        if not self.candidates:
            return self._fail(token)
        if len(self.candidates) == 1 and self.pos == len(self.candidates[0].header):
            self._open_body(self.candidates[0])

    def _end_body(self) -> None:
        if self.body.grammar is None:  # the analysis message closed: the answer or a call comes next
            self._open_header(first=False, analysis=False)
        else:
            self.done = True

    def _fail(self, token: int) -> None:
        log.warning("token %d is outside the request's constraint; the constraint is lifted", token)
        self.failed = True
