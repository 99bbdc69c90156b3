"""The `guards:` section of the cluster config: named filters, and which of them run on each model's requests.

A request's input chain is its model's `input` list, then its key's (auth keys' `guards`); the same for `output`.
"""

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from cluster.sections import ConfigError, Section, doc

BUILTIN_PATTERNS = ("email", "phone", "card")  # the regex filter's own patterns (cluster/guards/regex.py)


class GuardChainSpec(Section):
    input: list[str] = doc([], "filters (guards.filters names) run in order on the request before any replica sees it")
    output: list[str] = doc([], "filters run in order on the answer as it streams (every guards.every_tokens tokens; "
                                "held back until they pass)")

    def names(self) -> list[str]:
        return self.input + self.output


class PatternSpec(Section):
    name: str = doc("", "the pattern's name (said in refusals and redactions)", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    regex: str = doc("", "a Python regular expression", min_length=1)
    action: Literal["redact", "block"] | None = doc(None, "on input: redact (replace the match) or block (refuse the "
                                                          "request); None: the filter's action. On output every "
                                                          "match blocks")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"regex {value!r} does not compile: {err}") from None
        return value


class RegexFilterSpec(Section):
    """Patterns in text: e-mail addresses, phone numbers, card numbers (Luhn-checked) and the operator's own."""

    type: Literal["regex"] = doc("regex", "a regex / PII filter")
    builtin: list[Literal[BUILTIN_PATTERNS]] = doc(list(BUILTIN_PATTERNS), "built-in patterns to use: email, phone "
                                                                           "(international or national, 8+ digits), "
                                                                           "card (13-19 digits passing the Luhn check)")
    patterns: list[PatternSpec] = doc([], "more patterns")
    action: Literal["redact", "block"] = doc("redact", "what a match does to a request: redact (replaced by "
                                                       "[REDACTED:<pattern>]) or block (400, code content_filter)")


class PolicyFilterSpec(Section):
    """A classifier model served by this cluster reads the operator's policy and the text, and answers a verdict
    (gpt-oss-safeguard is made for this; any served model works)."""

    type: Literal["policy_model"] = doc("policy_model", "a policy-model filter")
    model: str = doc("", "the served model (models[].name) that classifies", min_length=1)
    policy: str | None = doc(None, "the written policy (the classifier's system message); or policy_file")
    policy_file: str | None = doc(None, "file holding the policy (a mounted Secret; re-read when it changes)")
    max_tokens: int = doc(256, "tokens the classifier may write (reasoning included)", ge=1)
    reasoning_effort: Literal["low", "medium", "high"] = doc("low", "the classifier's reasoning effort")
    max_chars: int = doc(8000, "characters of text sent to the classifier (the last ones)", ge=100)
    every_tokens: int | None = doc(None, "on output: classify every this many tokens (None: every window); the "
                                         "answer's last window is always classified", ge=1)
    allow_labels: list[str] = doc(["0", "allow", "allowed", "safe", "compliant", "valid", "no"],
                                  "first words of the answer (or JSON {\"violation\": 0}) meaning the text is allowed")
    violation_labels: list[str] = doc(["1", "violation", "violating", "unsafe", "block", "blocked", "invalid", "yes"],
                                      "first words (or JSON {\"violation\": 1}) meaning the text violates the policy")
    timeout_s: float = doc(10.0, "seconds the classifier may take; past it the filter has failed (on_error)", gt=0)
    on_error: Literal["allow", "block"] = doc(
        "block", "when the classifier fails, times out or answers no verdict: allow (fail open) or block (fail "
                 "closed: a request gets 503 content_filter_unavailable, an answer ends with content_filter)")

    @model_validator(mode="after")
    def _one_policy(self) -> "PolicyFilterSpec":
        if (self.policy is None) == (self.policy_file is None):
            raise ValueError("give the policy in exactly one of policy and policy_file")
        return self


FilterSpec = Annotated[RegexFilterSpec | PolicyFilterSpec, Field(discriminator="type")]


class GuardsConfig(Section):
    """Guard filters on the request path (cluster/guards/): input before any replica, output on the stream."""

    filters: dict[str, FilterSpec] = doc({}, "named filters: {type: regex, ...} or {type: policy_model, ...}")
    models: dict[str, GuardChainSpec] = doc({}, "model name -> the filters run on its requests (keys add theirs)")
    every_tokens: int = doc(16, "output filters check the answer every this many tokens (the first token alone, so "
                                "it is not delayed); the text is held back until they pass", ge=1, le=4096)

    @model_validator(mode="after")
    def _known_filters(self) -> "GuardsConfig":
        for model, chain in self.models.items():
            self.check_chain(chain, f"models.{model}")
        return self

    def check_chain(self, chain: GuardChainSpec, where: str) -> None:
        unknown = sorted(set(chain.names()) - set(self.filters))
        if unknown:
            raise ValueError(f"{where} names filters {unknown} that guards.filters does not define "
                             f"(defined: {sorted(self.filters)})")

    def check_models(self, served: list[str]) -> None:
        """Every model named here (chains, classifiers) is served; raises ConfigError."""
        for model in self.models:
            if model not in served:
                raise ConfigError(f"guards.models names {model!r}, which is not served (models: {served})")
        for name, spec in self.filters.items():
            if isinstance(spec, PolicyFilterSpec) and spec.model not in served:
                raise ConfigError(f"guards.filters.{name}.model {spec.model!r} is not served (models: {served})")
