"""The replica's side of the front door's accounting and output guard: windows of the answer, and a closing tally.

Flow: the front door stamps a request with `tally` (always) and `guard_every` (when an output filter runs on it)
-> the replica wraps the request's formatter in a `Watch` -> with `guard_every`, the items each engine output makes
are not yielded one by one but gathered into a `Window` (the first token alone, so the first token is not delayed,
then every `guard_every` tokens; also closed before items that are not the model's text, such as a tool's events),
which carries the text the items show, the usage so far, and `cut`: the items that would end the answer with
finish_reason "content_filter" if this window were refused (made before the window's tokens were fed) -> the last
window also carries the formatter's closing items (the body, usage chunk, [DONE], response.completed, StreamEnd) ->
after everything, a `Tally` (usage, tool calls, finish reason; the answer's text when the audit log keeps text).
The front door (cluster/frontdoor.py `Call`) unpacks windows once its output guard passed them, and keeps the tally;
a client never sees either.
"""

from dataclasses import dataclass, field

from cluster.output.openai import Usage

CONTENT_FILTER = "content_filter"  # the finish reason of an answer an output filter ended


@dataclass
class Window:
    """Part of an answer, held by the front door until its output filters pass it."""

    cut: list  # the items that end the answer before this window (finish_reason content_filter)
    items: list = field(default_factory=list)  # what the formatter made of the window's tokens
    text: str = ""  # the text those items show (content, reasoning, tool-call arguments)
    tokens: int = 0  # tokens generated in the window
    usage: Usage | None = None  # the answer's usage once this window's tokens are counted
    final: bool = False  # the answer ends in this window (its closing items are in `items`)


@dataclass
class Tally:
    """The last item of a request the front door asked to account for (never sent to a client)."""

    usage: Usage
    tool_calls: int = 0  # function and built-in tool calls the answer made
    finish_reason: str | None = None
    text: str | None = None  # the answer's visible text (only when the request asked: tally_text)


class Watch:
    """Wraps one formatter (cluster.output.Formatter) for the windows and tally the request asked for."""

    def __init__(self, req, formatter):
        self.formatter = formatter
        self.every = req.guard_every  # 0: no windows, items go out as the formatter makes them
        self.keep_text = req.tally_text
        self.size = 1  # the first window is one token
        self.open: Window | None = None
        self.text: list[str] = []  # the whole answer's text (keep_text)

    def feed(self, out) -> list:
        """The items for one engine output: the formatter's items, or a closed Window, or nothing yet."""
        if not self.every:
            items = self.formatter.feed(out)
            self._take_text()
            return items
        if self.open is None:
            self.open = Window(self.formatter.cut(CONTENT_FILTER))
        self.open.items += self.formatter.feed(out)
        self.open.text += self._take_text()
        self.open.tokens += sum(len(s.token_ids) for s in out.outputs)
        return self.flush() if self.open.tokens >= self.size else []

    def flush(self) -> list:
        """The open window, closed (call it before items that are not the model's text)."""
        window, self.open = self.open, None
        if window is None:
            return []
        window.usage = _copy(self.formatter.usage_now())
        self.size = self.every
        return [window]

    def finish(self, items: list) -> list:
        """The formatter's closing items; with windows, inside the last one."""
        if not self.every:
            return items
        window = self.open or Window(self.formatter.cut(CONTENT_FILTER))
        self.open = window
        window.items += items
        window.text += self._take_text()
        window.final = True
        return self.flush()

    def tally(self) -> Tally:
        f = self.formatter
        return Tally(_copy(f.usage_now()), f.tool_call_count(), f.finish_reason_now(),
                     "".join(self.text) if self.keep_text else None)

    def _take_text(self) -> str:
        text = self.formatter.take_text() if (self.every or self.keep_text) else ""
        if self.keep_text and text:
            self.text.append(text)
        return text


def _copy(usage: Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens)
