"""SamplingParams: what one request asks of the sampler, validated where it is made.

Flow: the API layer builds a `SamplingParams` (construction checks every field alone), the engine calls
`validate_for_model` once it knows the vocabulary, context length and prompt, and the sampler turns a step's
params into per-row tensors (`engine.sampler.SamplingBatch`). Field names and meanings follow vLLM's.
"""

import math
from dataclasses import dataclass

from engine.structured.params import StructuredOutputs

MAX_LOGPROBS = 20  # most top-n logprobs one generated token may ask for (OpenAI's cap)
MAX_N = 16  # most completions one request may ask for
GREEDY_EPS = 1e-5  # a temperature below this samples greedily (argmax), as in vLLM


def _fail(field: str, allowed: str, value) -> None:
    raise ValueError(f"{field} must be {allowed}, got {value!r}")


def _check_int(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, "an int", value)


def _check_real(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        _fail(field, "a real number", value)


@dataclass
class SamplingParams:
    n: int = 1  # completions to generate for the prompt, in [1, MAX_N]
    temperature: float = 1.0  # >= 0; 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus: keep the fewest top tokens whose probability sums to >= top_p; in (0, 1]
    top_k: int = 0  # keep the k most likely tokens; 0 or -1 = off
    min_p: float = 0.0  # drop tokens with probability < min_p * the top token's; in [0, 1], 0 = off
    seed: int | None = None  # per-request seed: its tokens then do not depend on what else is in the batch
    presence_penalty: float = 0.0  # OpenAI: subtracted once from every token already generated; in [-2, 2]
    frequency_penalty: float = 0.0  # OpenAI: subtracted per occurrence in the generated tokens; in [-2, 2]
    repetition_penalty: float = 1.0  # HF/CTRL: shrinks logits of tokens seen in prompt or output; > 0, 1 = off
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit, each in [-100, 100]
    logprobs: int | None = None  # top-n logprobs to return per generated token, in [0, MAX_LOGPROBS]
    max_tokens: int = 16  # most tokens to generate, >= 1
    min_tokens: int = 0  # stop tokens are banned until this many are generated; in [0, max_tokens]
    stop: list[str] | str | None = None  # stop strings; normalized to a list (empty = none)
    stop_token_ids: list[int] | None = None  # token ids that end the request besides eos
    ignore_eos: bool = False  # keep generating past eos (until max_tokens or a stop)
    skip_special_tokens: bool = True  # leave special tokens out of the detokenized text
    detokenize: bool = True  # False: token ids only, no text (vLLM's name; stop strings need the text)
    priority: int = 0  # scheduling priority; lower runs first
    structured_outputs: StructuredOutputs | None = None  # what the output must match (engine.structured); None: free
    max_reasoning_tokens: int | None = None  # harmony: tokens the analysis message may take before the engine ends it
    #                                          and opens the answer; None: the engine's default (constrained requests)

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_sampling()
        self._check_penalties()
        self._check_stops()

    @property
    def constrained(self) -> bool:
        """The sampling rank follows this request with a HarmonyConstraint (engine.structured.harmony)."""
        return self.structured_outputs is not None or self.max_reasoning_tokens is not None

    @property
    def is_greedy(self) -> bool:
        """True when the request takes the argmax each step (temperature 0)."""
        return self.temperature < GREEDY_EPS

    def validate_for_model(self, vocab_size: int, max_model_len: int, prompt_len: int) -> None:
        """The checks that need the model: token ids in the vocabulary and the request fitting the context."""
        for field, ids in (("logit_bias", self.logit_bias or {}), ("stop_token_ids", self.stop_token_ids or [])):
            for tok in ids:
                if not 0 <= tok < vocab_size:
                    _fail(f"{field} token ids", f"in [0, {vocab_size}) (the vocabulary)", tok)
        room = max_model_len - prompt_len
        if self.max_tokens > room:
            _fail("max_tokens", f"<= {room} (max_model_len {max_model_len} - prompt of {prompt_len} tokens)",
                  self.max_tokens)

    def _check_counts(self) -> None:
        for field in ("n", "max_tokens", "min_tokens", "top_k", "priority"):
            _check_int(field, getattr(self, field))
        if not 1 <= self.n <= MAX_N:
            _fail("n", f"in [1, {MAX_N}]", self.n)
        if self.max_tokens < 1:
            _fail("max_tokens", ">= 1", self.max_tokens)
        if not 0 <= self.min_tokens <= self.max_tokens:
            _fail("min_tokens", f"in [0, max_tokens={self.max_tokens}]", self.min_tokens)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                _fail("logprobs", f"in [0, {MAX_LOGPROBS}] or None", self.logprobs)
        if self.seed is not None:
            _check_int("seed", self.seed)
        if self.max_reasoning_tokens is not None:
            _check_int("max_reasoning_tokens", self.max_reasoning_tokens)
            if self.max_reasoning_tokens < 0:
                _fail("max_reasoning_tokens", ">= 0 (0: no analysis message) or None", self.max_reasoning_tokens)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputs):
            _fail("structured_outputs", "an engine.structured.params.StructuredOutputs or None",
                  self.structured_outputs)

    def _check_sampling(self) -> None:
        for field in ("temperature", "top_p", "min_p"):
            _check_real(field, getattr(self, field))
        if not 0 <= self.temperature < math.inf:
            _fail("temperature", ">= 0 and finite (0 = greedy)", self.temperature)
        if not 0 < self.top_p <= 1:
            _fail("top_p", "in (0, 1]", self.top_p)
        if self.top_k < -1:
            _fail("top_k", ">= 1, or 0 / -1 for off", self.top_k)
        if not 0 <= self.min_p <= 1:
            _fail("min_p", "in [0, 1]", self.min_p)

    def _check_penalties(self) -> None:
        for field in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
            _check_real(field, getattr(self, field))
        for field in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, field) <= 2:
                _fail(field, "in [-2, 2]", getattr(self, field))
        if not 0 < self.repetition_penalty < math.inf:
            _fail("repetition_penalty", "> 0 and finite (1 = off)", self.repetition_penalty)
        for tok, bias in (self.logit_bias or {}).items():
            _check_int("logit_bias token ids", tok)
            _check_real(f"logit_bias[{tok}]", bias)
            if not -100 <= bias <= 100:
                _fail(f"logit_bias[{tok}]", "in [-100, 100]", bias)

    def _check_stops(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            _fail("stop", "a non-empty string or a list of them", self.stop)
        for tok in self.stop_token_ids or []:
            _check_int("stop_token_ids", tok)
        if self.stop and not self.detokenize:
            _fail("stop", "empty when detokenize is False (stop strings are matched in the text)", self.stop)
