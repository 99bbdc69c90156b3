"""The output guard: a request's output chain over the windows of its answer, in the front door, before the client.

Flow: the front door's `Call` meets a `Window` (cluster/output/window.py) -> `OutputGuard.passes(window)`: the
window's text joins the answer; each output filter checks the answer with its unchecked part marked (a policy
filter with its own `every_tokens` waits until that many tokens built up; the last window always runs every filter)
-> all allow: the Call releases the window's items; one blocks (or fails with on_error block): the Call drops the
window, stops the replica's stream and sends `window.cut` instead (finish_reason "content_filter"; Responses end
incomplete with incomplete_details.reason content_filter).
"""

from dataclasses import dataclass, field


@dataclass
class OutputGuard:
    guards: object  # cluster.guards.chain.Guards (its `run` applies timeouts and on_error)
    filters: list  # the request's output chain
    answer: str = ""  # the answer so far (every window's text, in order)
    checked: dict = field(default_factory=dict)  # filter name -> chars of the answer it has checked
    waiting: dict = field(default_factory=dict)  # filter name -> tokens since it last ran
    notes: list[str] = field(default_factory=list)  # "name:action" of each block or failure, for the audit log
    blocked_by: str | None = None  # the filter that ended the answer

    async def passes(self, window) -> bool:
        self.answer += window.text
        for f in self.filters:
            self.waiting[f.name] = self.waiting.get(f.name, 0) + window.tokens
            if not window.final and f.every_tokens and self.waiting[f.name] < f.every_tokens:
                continue
            start = self.checked.get(f.name, 0)
            if start == len(self.answer) and not window.final:
                continue  # nothing new for it (a window of tool events or a token without text)
            verdict = await self.guards.run(f, "output", f.check_output(self.answer, start, window.final))
            self.checked[f.name], self.waiting[f.name] = len(self.answer), 0
            if verdict.failed:
                self.notes.append(f"{f.name}:error-{verdict.action}")
            if verdict.action == "block":
                if not verdict.failed:
                    self.notes.append(f"{f.name}:block")
                self.blocked_by = f.name
                return False
        return True
