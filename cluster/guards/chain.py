"""A front door's filters and a request's chains: which filters run, in what order, and what their failure means.

Flow: `Guards(config, classify)` builds every filter of `guards.filters` once per front door -> per request
`chains(model, key)`: the model's input / output lists, then the key's, without repeats -> `check_input(req, filters)`
collects the request's text fields (`input_fields`; a prompt of token ids cannot be read: 400 naming it), runs each
filter (under its timeout), applies redactions to the fields before the next filter and finally to the request,
raises on a block (400 content_filter; a failed filter whose on_error is block: 503) -> `run(filter, stage, coro)`
is also what the output guard (output.py) calls: any exception or timeout becomes the filter's on_error verdict,
counted in `failures`, never a 500.
"""

import asyncio
import logging

from cluster.errors import ApiError, content_blocked, filter_unavailable
from cluster.guards import TextField, Verdict
from cluster.guards.config import PolicyFilterSpec
from cluster.guards.policy import PolicyFilter
from cluster.guards.regex import RegexFilter

log = logging.getLogger(__name__)


class Guards:
    """The filters of one front door."""

    def __init__(self, config, classify, on_event=None):
        """`classify`: the front door's way to ask a served model (cluster/guards/policy.py); `on_event(filter,
        stage, outcome)`: metrics (outcome: allow, redact, block, error)."""
        self.config = config
        self.filters = {name: (PolicyFilter(name, spec, classify) if isinstance(spec, PolicyFilterSpec)
                               else RegexFilter(name, spec)) for name, spec in config.filters.items()}
        self.on_event = on_event or (lambda *args: None)

    def chains(self, model: str, key_chain) -> tuple[list, list]:
        """(input filters, output filters) of a request to `model` made with a key whose chain is `key_chain`."""
        spec = self.config.models.get(model)
        names_in = (spec.input if spec else []) + key_chain.input
        names_out = (spec.output if spec else []) + key_chain.output
        return self._resolve(names_in), self._resolve(names_out)

    def _resolve(self, names: list[str]) -> list:
        out = []
        for name in dict.fromkeys(names):
            if name in self.filters:
                out.append(self.filters[name])
            else:  # a key file names a filter this config lacks (the key ring checks this when it loads)
                log.error("guard filter %r is not defined in guards.filters; skipped", name)
        return out

    async def check_input(self, req, filters: list) -> list[str]:
        """Runs the input chain on `req` (redactions written into it); raises ApiError on a block. Returns what each
        filter did ("name:action"), for the audit log."""
        if not filters:
            return []
        fields, slots = input_fields(req)
        notes = []
        for f in filters:
            verdict = await self.run(f, "input", f.check_input(fields))
            notes.append(f"{f.name}:{'error-' if verdict.failed else ''}{verdict.action}")
            if verdict.action == "block":
                if verdict.failed:
                    raise filter_unavailable(f.name, verdict.reason)
                raise content_blocked(verdict.param, f.name, verdict.reason)
            if verdict.action == "redact":
                fields = [TextField(x.param, x.role, text) for x, text in zip(fields, verdict.texts)]
        _write_back(req, fields, slots)
        return notes

    async def run(self, f, stage: str, coro) -> Verdict:
        """`coro` (a filter's check) under the filter's timeout; a failure is the filter's on_error verdict."""
        try:
            if f.timeout_s is None:
                verdict = await coro
            else:
                async with asyncio.timeout(f.timeout_s):
                    verdict = await coro
        except Exception as err:  # noqa: BLE001 - a filter that fails never fails the request with a 500
            reason = "timed out" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
            log.warning("guard filter %s (%s) failed: %s; on_error: %s", f.name, stage, reason, f.on_error)
            self.on_event(f.name, stage, "error")
            return Verdict(f.on_error, reason, failed=True)
        self.on_event(f.name, stage, verdict.action)
        return verdict


def input_fields(req) -> tuple[list[TextField], list]:
    """The request's text fields and where each goes back: (fields, slots) with slot = message index or "prompt"."""
    if req.messages is None:
        if not isinstance(req.prompt, str):
            param = req.renames.get("prompt", "prompt")
            raise ApiError(400, f"{param} is token ids, which the content filters of model {req.model!r} cannot read; "
                                "send the prompt as text", "invalid_request_error", param, "content_filter")
        return [TextField(req.renames.get("prompt", "prompt"), "user", req.prompt)], ["prompt"]
    fields, slots = [], []
    for i, message in enumerate(req.messages):
        if isinstance(message.get("content"), str) and message["content"]:
            param = "input" if req.kind == "response" else f"messages[{i}].content"
            fields.append(TextField(param, message.get("role", "user"), message["content"]))
            slots.append(i)
    return fields, slots


def _write_back(req, fields: list[TextField], slots: list) -> None:
    for field, slot in zip(fields, slots):
        if slot == "prompt":
            req.prompt = field.text
        elif req.messages[slot]["content"] != field.text:
            req.messages[slot] = {**req.messages[slot], "content": field.text}
