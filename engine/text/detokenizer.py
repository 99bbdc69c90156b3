"""IncrementalDetokenizer: generated ids -> text deltas for streaming, with stop strings.

Flow: each engine step calls `add(new_ids)` -> bytes of just those ids -> an incremental UTF-8 decoder holds an
incomplete character back -> text that could still grow into a stop string is held back too -> the rest is the
delta. `flush()` at the end releases what is held. Work per call is O(new tokens + total stop-string length),
never a re-decode of the whole output. Stop strings follow vLLM: the text is cut before the stop string.
"""

import codecs
from typing import Protocol


class TokenDecoder(Protocol):
    def decode_bytes(self, ids: list[int]) -> bytes: ...

    def is_special(self, token_id: int) -> bool: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: TokenDecoder, stop: list[str] | tuple[str, ...] | str | None = (),
                 skip_special_tokens: bool = True):
        stop = [stop] if isinstance(stop, str) else list(stop or ())
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        self._tok = tokenizer
        self._stop = stop
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""  # decoded text not yet emitted: a suffix that may be the start of a stop string
        self._chunks: list[str] = []  # every delta emitted so far
        self.stopped_on: str | None = None  # the stop string that ended the text, once one has

    @property
    def text(self) -> str:
        """All text emitted so far (the concatenation of the deltas returned by add and flush)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]  # join once; later calls with no new text are free
        return self._chunks[0] if self._chunks else ""

    @property
    def stopped(self) -> bool:
        return self.stopped_on is not None

    def add(self, token_ids) -> str:
        """The new text that `token_ids` complete; "" once a stop string has been seen."""
        if self.stopped:
            return ""
        ids = [t for t in token_ids if not (self._skip_special and self._tok.is_special(t))]
        self._held += self._utf8.decode(self._tok.decode_bytes(ids) if ids else b"")
        return self._emit(self._release_point())

    def flush(self) -> str:
        """End of output: releases held text (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._utf8.decode(b"", final=True)
        return self._emit(self._release_point(final=True))

    def _release_point(self, final: bool = False) -> int:
        """How much of `_held` may go out now; on a completed stop string, records it and cuts before it."""
        hits = [(pos, -len(s), s) for s in self._stop if (pos := self._held.find(s)) >= 0]
        if hits:
            pos, _, self.stopped_on = min(hits)  # the earliest stop string; the longest if two start together
            return pos
        if final:
            return len(self._held)
        return len(self._held) - max((self._partial_stop(s) for s in self._stop), default=0)

    def _partial_stop(self, stop: str) -> int:
        """Length of the longest suffix of `_held` that is a proper prefix of `stop` (0 if none)."""
        for k in range(min(len(stop) - 1, len(self._held)), 0, -1):
            if self._held.endswith(stop[:k]):
                return k
        return 0

    def _emit(self, upto: int) -> str:
        delta, self._held = self._held[:upto], ("" if self.stopped else self._held[upto:])
        if delta:
            self._chunks.append(delta)
        return delta
