"""One request's state from arrival to finish, on the host: its tokens, detokenizer and stop conditions.

The scheduler reads and advances `num_computed_tokens` (and `num_pending` under async scheduling); the engine
appends sampled tokens with `append`, which applies the stop rules (stop ids, stop strings, max_tokens) and
collects the new text. Sampling state that lives across steps (the seeded generator, the token history penalties
read) is kept by the worker that samples (engine.worker), not here.
"""

import enum
import time
from dataclasses import dataclass, field

from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import SamplingParams
from engine.text.detokenizer import IncrementalDetokenizer


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]  # the model's end-of-sequence ids (ignored with params.ignore_eos)
    prompt: str | None = None
    detokenizer: IncrementalDetokenizer | None = None
    index: int = 0  # which of a parent's n samples this is
    parent_id: str | None = None  # the id the caller gave (children of an n > 1 request share it)
    arrival_time: float = field(default_factory=time.monotonic)

    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None
    status: Status = Status.WAITING
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_computed_tokens: int = 0  # tokens whose KV is in the cache, or being written by the step in flight
    num_pending: int = 0  # tokens sampled by a step still running, not appended yet (async scheduling: 0 or 1)
    num_cached_tokens: int = 0  # prompt tokens that came from the prefix cache
    num_preemptions: int = 0
    metrics: dict = field(default_factory=dict)  # monotonic timestamps: scheduled, first_token, finished

    def __post_init__(self):
        self.parent_id = self.parent_id or self.request_id
        if self.params.logprobs is not None:
            self.logprobs = []
        self.stop_ids = self._stop_ids()
        self._stop_set = frozenset(self.stop_ids)
        self._new_tokens_from = 0  # start of the tokens not yet reported by `take_output`
        self._new_text = ""

    # ---- token views ----
    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_between(self, begin: int, end: int) -> list[int]:
        """all_token_ids[begin:end] without building the whole list (a decode step reads one token)."""
        n = len(self.prompt_token_ids)
        if begin >= n:
            return self.output_token_ids[begin - n : end - n]
        return self.prompt_token_ids[begin:end] + self.output_token_ids[: max(0, end - n)]

    def _stop_ids(self) -> list[int]:
        """Token ids that end this request (the sampler bans them until min_tokens)."""
        ids = set(self.params.stop_token_ids or ())
        if not self.params.ignore_eos:
            ids |= self.eos_token_ids
        return sorted(ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    # ---- appending ----
    def append(self, token_id: int, logprobs: dict[int, float] | None = None) -> None:
        """Record a sampled token and apply the stop rules."""
        self.output_token_ids.append(token_id)
        if self.logprobs is not None:
            self.logprobs.append(logprobs or {})
        self.metrics.setdefault("first_token", time.monotonic())
        n, params = len(self.output_token_ids), self.params
        if n >= params.min_tokens and token_id in self._stop_set:
            return self.finish("stop", token_id)
        self._detokenize(token_id, final=n >= params.max_tokens)
        if self.detokenizer is not None and self.detokenizer.stopped_on is not None and n >= params.min_tokens:
            return self.finish("stop", self.detokenizer.stopped_on)
        if n >= params.max_tokens:
            self.finish("length")

    def _detokenize(self, token_id: int, final: bool) -> None:
        if self.detokenizer is None:
            return
        self._new_text += self.detokenizer.add([token_id])
        if final and self.detokenizer.stopped_on is None:
            self._new_text += self.detokenizer.flush()

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        if self.finished:
            return
        if reason != "stop" and self.detokenizer is not None and self.detokenizer.stopped_on is None:
            self._new_text += self.detokenizer.flush()
        self.status, self.finish_reason, self.stop_reason = Status.FINISHED, reason, stop_reason
        self.metrics["finished"] = time.monotonic()

    # ---- reporting ----
    @property
    def text(self) -> str:
        return self.detokenizer.text if self.detokenizer is not None else ""

    def take_output(self, delta: bool) -> CompletionOutput:
        """This request's output: only what is new since the last call when `delta`, else everything."""
        start = self._new_tokens_from if delta else 0
        text = self._new_text if delta else self.text
        self._new_tokens_from, self._new_text = len(self.output_token_ids), ""
        return CompletionOutput(
            index=self.index, token_ids=self.output_token_ids[start:], text=text,
            logprobs=None if self.logprobs is None else self.logprobs[start:],
            finish_reason=self.finish_reason, stop_reason=self.stop_reason)

    def to_output(self, delta: bool = False) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
            outputs=[self.take_output(delta)], finished=self.finished, num_cached_tokens=self.num_cached_tokens,
            metrics={"arrival": self.arrival_time, **self.metrics})


def merge_outputs(requests: list[Request], siblings: list[Request], delta: bool) -> RequestOutput:
    """One RequestOutput for the samples of one prompt (`LLM` and `AsyncLLM` both): `requests` are the samples with
    something to report, in index order, out of all n `siblings`; it carries the caller's request id and is
    finished once every sibling is. `delta`: only what is new since the last output."""
    out = requests[0].to_output(delta)
    out.request_id = requests[0].parent_id
    out.outputs += [r.take_output(delta) for r in requests[1:]]
    out.finished = all(s.finished for s in siblings)
    return out
