"""What a request asks its output to match: plain data on `SamplingParams` (no torch, no xgrammar here, so the
cluster can build and check it).

Flow: the API layer builds a `StructuredOutputs` (chat `response_format`, Responses `text.format`, `tool_choice`,
strict function tools; `LLM` users directly) -> `SamplingParams.structured_outputs` -> the engine compiles each
`Grammar` once (engine.structured.grammar, off the engine loop, bounded in time) -> the sampling rank follows the
request's tokens with a `HarmonyConstraint` (engine.structured.harmony) and masks its logits each step.

With `harmony` on (chat and Responses), the output is one assistant turn: the analysis message stays free text
(up to `SamplingParams.max_reasoning_tokens`), then either the final message, whose content matches `final`, or a
call to one of `functions`, whose arguments match that function's grammar. With `harmony` off the whole output
matches `final`. Built-in tools the server runs (`builtins`) stay callable from the analysis channel.
"""

import json
from dataclasses import dataclass

KINDS = ("json_schema", "json_object", "regex", "text")
MAX_SPEC_BYTES = 32 * 1024  # the largest schema (as JSON text) or regex a request may send
MAX_FUNCTIONS = 128  # the most functions one constraint may offer


@dataclass(frozen=True)
class Grammar:
    """One part of the output: what its text must match."""

    kind: str  # "json_schema" (spec: the schema as JSON text), "json_object" (any JSON object), "regex" (spec: the
    #            pattern), or "text" (any text without special tokens: no grammar)
    spec: str = ""  # the schema or the pattern; "" for json_object and text
    field: str = "structured_outputs"  # the request field it came from: errors about it start with this name

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.field} kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not isinstance(self.spec, str):
            raise ValueError(f"{self.field} must be given as text (a JSON schema as JSON, or a regex)")
        if len(self.spec.encode()) > MAX_SPEC_BYTES:
            raise ValueError(f"{self.field} is {len(self.spec.encode())} bytes; at most {MAX_SPEC_BYTES} bytes are "
                             "accepted: send a smaller schema or pattern")
        if self.kind in ("json_schema", "regex") and not self.spec:
            raise ValueError(f"{self.field} must not be empty")

    @classmethod
    def json_schema(cls, schema: dict | str, field: str = "structured_outputs") -> "Grammar":
        """A JSON schema given as a dict or as JSON text (canonical JSON text: equal schemas share a cache entry)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise ValueError(f"{field} is not valid JSON: {err}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"{field} must be a JSON schema object, got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema, sort_keys=True, separators=(",", ":")), field)

    @property
    def free(self) -> bool:
        """No grammar: any text (special tokens excepted)."""
        return self.kind == "text"


@dataclass(frozen=True)
class StructuredOutputs:
    """The constraint on one request's output."""

    final: Grammar | None = Grammar("text")  # the answer's content (harmony: the final channel); None: no final
    #                                           answer may come (harmony only: a call to one of `functions` must)
    functions: tuple[tuple[str, Grammar], ...] = ()  # harmony: (function name, its arguments' grammar) it may call
    harmony: bool = True  # the output is a harmony assistant turn (see the module docstring)
    builtins: tuple[str, ...] = ()  # harmony: built-in tool recipients it may address on the analysis channel
    #                                 (`python`, `browser.search`, ...), their content free text ended by <|call|>

    def __post_init__(self):
        object.__setattr__(self, "functions", tuple((n, g) for n, g in self.functions))
        object.__setattr__(self, "builtins", tuple(self.builtins))
        if len(self.functions) > MAX_FUNCTIONS:
            raise ValueError(f"tools has {len(self.functions)} functions; at most {MAX_FUNCTIONS} can be constrained")
        if not self.harmony and (self.final is None or self.functions):
            raise ValueError("structured_outputs without harmony constrains the whole output: give final and no "
                             "functions")
        if self.final is None and not self.functions and not self.builtins:
            raise ValueError("tool_choice requires a tool call, but no function can be called")

    @property
    def grammars(self) -> list[Grammar]:
        """Every grammar to compile (the free-text parts need none)."""
        parts = ([self.final] if self.final is not None else []) + [g for _, g in self.functions]
        return [g for g in parts if not g.free]
