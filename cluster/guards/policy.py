"""The policy-model filter: a classifier model served by this cluster judges text against the operator's policy.

Flow: input (the conversation, role by role) or output (the answer so far) -> the last `max_chars` characters ->
a chat request to `model` through the front door (no keys, quotas or guards of its own): the policy as the system
message, the text as the user message, greedy, `reasoning_effort` and `max_tokens` from the config (how
gpt-oss-safeguard is asked; any served model answers the same way) -> its final answer -> `parse_verdict`: a JSON
object with `violation` (0/1, true/false), or a first word among `violation_labels` / `allow_labels` -> block or
allow. Anything else (an empty answer, other words: what a random model says) is no verdict: `NoVerdict`, which
the chain turns into the filter's `on_error`. The policy comes from the config or from `policy_file` (a mounted
Secret), re-read when the file changes.
"""

import json
import re
from pathlib import Path

from cluster.guards import ALLOW, TextField, Verdict

WORD = re.compile(r"[A-Za-z0-9]+")


class NoVerdict(Exception):
    """The classifier answered, but not with a verdict."""


def parse_verdict(text: str, allow_labels: list[str], violation_labels: list[str]) -> bool | None:
    """True: a violation; False: allowed; None: no verdict in `text`."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            value = json.loads(text).get("violation")
        except (ValueError, AttributeError):
            value = None
        if value in (0, 1, True, False, "0", "1"):
            return value in (1, True, "1")
    first = WORD.search(text)
    word = first.group().lower() if first else ""
    if word in {w.lower() for w in violation_labels}:
        return True
    if word in {w.lower() for w in allow_labels}:
        return False
    return None


class PolicyFilter:
    def __init__(self, name: str, spec, classify):
        """`classify(model, messages, max_tokens, reasoning_effort) -> the answer's text` (the front door's)."""
        self.name, self.spec, self.classify = name, spec, classify
        self.on_error, self.timeout_s, self.every_tokens = spec.on_error, spec.timeout_s, spec.every_tokens
        self._policy = (None, spec.policy)  # (the file's bytes it was read from, the policy)

    def policy(self) -> str:
        if self.spec.policy_file is None:
            return self.spec.policy
        data = Path(self.spec.policy_file).read_bytes()
        if data != self._policy[0]:
            self._policy = (data, data.decode("utf-8").strip())
        return self._policy[1]

    async def check_input(self, fields: list[TextField]) -> Verdict:
        return await self._judge("\n\n".join(f"[{f.role}]\n{f.text}" for f in fields))

    async def check_output(self, answer: str, new_from: int, final: bool) -> Verdict:
        return await self._judge(answer)

    async def _judge(self, text: str) -> Verdict:
        messages = [{"role": "system", "content": self.policy()},
                    {"role": "user", "content": text[-self.spec.max_chars:]}]
        answer = await self.classify(self.spec.model, messages, self.spec.max_tokens, self.spec.reasoning_effort)
        violation = parse_verdict(answer, self.spec.allow_labels, self.spec.violation_labels)
        if violation is None:
            raise NoVerdict(f"the classifier {self.spec.model!r} answered no verdict ({answer[:60]!r})")
        return Verdict("block", f"the classifier {self.spec.model!r} found a policy violation") if violation \
            else ALLOW
