"""Guard filters: a chain of checks on what a request says (input) and what its answer says (output).

Flow: the front door (cluster/safety.py) resolves a request's chains: its model's (`guards.models`) then its key's
(`guards` of a named key) -> input: `Guards.check_input` hands every text field of the request (chat and Responses
message contents, a completion's prompt) to each filter in order; a filter allows, redacts (the fields are replaced
before the next filter and before any replica sees them) or blocks (400, code content_filter, naming the field and
the filter) -> output: the replica groups the answer into windows (cluster/output/window.py; the first token alone,
then every `guards.every_tokens` tokens) and the front door's `OutputGuard` (output.py) runs the output chain on
each window before its items reach the client; a block ends the answer with finish_reason "content_filter" ->
a filter that raises, times out or answers nothing usable follows its `on_error` (allow: fail open; block: 503
content_filter_unavailable on input, content_filter on output), never a 500.
Filters (one interface, `Filter`): `regex` (regex.py: e-mail addresses, phone numbers, card numbers with a Luhn
check, the operator's patterns) and `policy_model` (policy.py: a classifier model served by this cluster reads the
operator's written policy and the text, and its verdict is parsed).
"""

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass
class TextField:
    """One text of a request, as the input chain sees it."""

    param: str  # the request field it came from: "messages[1].content", "prompt", "input"
    role: str  # "system", "developer", "user", "assistant", "tool" ("user" for a prompt)
    text: str


@dataclass
class Verdict:
    """What a filter decided."""

    action: Literal["allow", "redact", "block"]
    reason: str = ""  # what matched or what the classifier said (never the text itself)
    param: str | None = None  # block on input: the field at fault
    texts: list[str] | None = None  # redact: every field's new text, in order
    failed: bool = False  # the filter failed; this verdict is its on_error


ALLOW = Verdict("allow")


class Filter(Protocol):
    name: str
    on_error: Literal["allow", "block"]  # when it raises or times out
    timeout_s: float | None  # None: no timeout (it cannot hang)
    every_tokens: int | None  # on output: run once this many tokens built up (None: every window)

    async def check_input(self, fields: list[TextField]) -> Verdict: ...

    async def check_output(self, answer: str, new_from: int, final: bool) -> Verdict:
        """`answer`: the whole answer so far; `answer[new_from:]` has not been checked yet; `final`: the answer ends
        here."""
        ...
