"""The operator's safety layer in the front door: scopes, quotas, guard filters, the audit log and per-key metrics,
the same for every protocol because every protocol goes through the one front door.

Flow of a generation (`FrontDoor.open`, cluster/frontdoor.py): the adapter's `Caller` (cluster/auth.py: the key,
the client, the route) -> scopes (cluster/scopes.py: 403 naming what is not allowed; bounds filled in) ->
`Safety.enter`: the quota ledger reserves the request (cluster/quota.py: 429 with the time until allowed; the
gateway's per-key rates are buckets there too) -> the input chain (cluster/guards/: redact, or 400 content_filter)
-> the request is stamped: `tally` (the replica ends the stream with usage and tool calls), `guard_every` when an
output filter runs (the replica sends windows; the `Ticket`'s `OutputGuard` checks each before the client sees
it), `tally_text` when the audit log keeps text -> the replica streams -> `Ticket.close` when the Call closes:
the ledger is charged the real prompt + generated tokens (a stream cut short: what the front door saw of it), one
audit record (cluster/audit.py), the per-key counters (gptoss_key_*). A request refused on the way (scope, quota,
filter, drain, unknown model) gets its audit record and counters through `refused`. Nothing here may fail a
request that would otherwise succeed: the ledger follows `quotas.on_ledger_error`, filters their `on_error`, and
the audit log only counts what it could not write.
"""

import logging
import time
from dataclasses import dataclass, field

from cluster.audit import AuditLog
from cluster.errors import ApiError
from cluster.guards.chain import Guards
from cluster.guards.output import OutputGuard
from cluster.guards.regex import RegexFilter
from cluster.metrics import SafetyMetrics
from cluster.output.openai import Usage
from cluster.quota import QuotaClient, Reservation, grpc_limits, key_limits
from cluster.scopes import ROUTE_OF_KIND

log = logging.getLogger(__name__)
REFUSAL_REASONS = {"permission_denied": "scope", "rate_limit_exceeded": "quota", "content_filter": "content_filter",
                   "content_filter_unavailable": "filter_unavailable", "quota_ledger_unavailable": "ledger_unavailable"}


class Safety:
    """One front door's safety layer (`source`: the front door's name, which names its audit chain)."""

    def __init__(self, config, source: str, ledger=None, classify=None, key_reload_errors=lambda: 0):
        self.config = config
        self.metrics = SafetyMetrics(self._counts)
        self.quotas = QuotaClient(config.quotas, ledger, on_error=self._ledger_failed)
        self.guards = Guards(config.guards, classify, self.metrics.on_check)
        self.audit = AuditLog(config.audit, source, _redactor(config)) if config.audit.enabled else None
        self.grpc_limits = grpc_limits(config.grpc)
        self.ledger_errors = {"open": 0, "closed": 0}
        self.key_reload_errors = key_reload_errors  # the adapter's key ring counts them

    async def enter(self, req, caller, route: str, generation: bool = True) -> "Ticket":
        """After the scopes: quota, input filters, the stamps the replica reads (`generation` False: a tokenize
        call, which takes a request from the quota and reserves no tokens). Raises ApiError (nothing held)."""
        key = caller.key
        limits = key_limits(key.quotas) + (self.grpc_limits if caller.protocol == "grpc" else [])
        reservation = await self.quotas.reserve(key.name, limits, estimate(req, self.config) if generation else 0)
        inputs, outputs = self.guards.chains(req.model, key.guards) if generation else ([], [])
        try:
            notes = await self.guards.check_input(req, inputs)
        except ApiError:
            self.quotas.settle(reservation, 0)
            raise
        req.tally = True
        req.tally_text = bool(self.audit and self.config.audit.include_text)
        guard = OutputGuard(self.guards, outputs) if outputs else None
        if guard is not None:
            req.guard_every = self.config.guards.every_tokens
        return Ticket(self, req, caller, route, reservation, guard, notes)

    def refused(self, req, caller, route: str, err: ApiError) -> None:
        """A request refused before it reached a replica."""
        reason = REFUSAL_REASONS.get(err.code)
        if reason is not None:
            self.metrics.on_refusal(caller.key.name, reason)
        self.metrics.on_request(caller.key.name, route, err.status)
        self.write(req, caller, err.status, "refused", err=err)

    def write(self, req, caller, status: int, outcome: str, usage: Usage | None = None, tally=None,
              err: ApiError | None = None, guards: list[str] = (), started: float | None = None) -> None:
        """One audit record."""
        if self.audit is None or caller.protocol == "internal":
            return
        received = req.received or time.time()
        usage = usage or Usage()
        record = {"at": received, "request_id": req.request_id.split("~")[0], "key": caller.key.name,
                  "protocol": caller.protocol, "route": caller.route, "model": req.model, "status": status,
                  "outcome": outcome, "code": err.code if err is not None else None,
                  "finish_reason": tally.finish_reason if tally is not None else None,
                  "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "reasoning_tokens": usage.reasoning_tokens, "tool_calls": tally.tool_calls if tally else 0,
                  "latency_ms": round((time.time() - received) * 1000, 1), "client": caller.client,
                  "guards": list(guards)}
        if self.config.audit.include_text:
            record["prompt"] = self.audit.text(prompt_text(req))
            record["completion"] = self.audit.text(tally.text if tally is not None else None)
        self.audit.record(record)

    def _ledger_failed(self, policy: str) -> None:
        self.ledger_errors[policy] += 1

    def _counts(self) -> dict:
        audit = self.audit
        return {"ledger_errors": self.ledger_errors, "audit_records": audit.seq if audit else 0,
                "audit_errors": audit.errors if audit else 0, "key_reload_errors": self.key_reload_errors()}

    async def close(self) -> None:
        if self.audit is not None:
            await self.audit.close()


@dataclass
class Ticket:
    """An admitted request's safety state, from admission to the close of its Call."""

    safety: Safety
    req: object  # the GenerateRequest
    caller: object  # cluster.auth.Caller
    route: str  # chat, completions, responses, tokenize
    reservation: Reservation
    output: OutputGuard | None  # the output chain, when one runs
    notes: list[str] = field(default_factory=list)  # what the input filters did
    client: object = None  # the model's ModelClient (set by the front door)
    closed: bool = False

    def close(self, usage: Usage | None, tally, status: int, outcome: str, err: ApiError | None = None) -> None:
        """The request is over: charge it, count it, record it (once)."""
        if self.closed:
            return
        self.closed = True
        s, key = self.safety, self.caller.key
        usage = usage or Usage()
        s.quotas.settle(self.reservation, usage.prompt_tokens + usage.completion_tokens)
        s.metrics.on_request(key.name, self.route, status, usage)
        if outcome == "content_filter" or (err is not None and err.code in REFUSAL_REASONS):
            s.metrics.on_refusal(key.name, "content_filter" if outcome == "content_filter"
                                 else REFUSAL_REASONS[err.code])
        guards = self.notes + (self.output.notes if self.output is not None else [])
        s.write(self.req, self.caller, status, outcome, usage, tally, err, guards)


def estimate(req, config) -> int:
    """Tokens to reserve for `req` before it runs: its prompt (about 3 characters a token, plus each message's
    framing) and what it may generate (max_tokens, else the model's default_max_tokens, else nothing)."""
    if isinstance(req.prompt, list):
        prompt = len(req.prompt)
    else:
        text = prompt_text(req) or ""
        prompt = len(text) // 3 + 8 * len(req.messages or ()) + 16
    spec = config.model(req.model)
    most = req.sampling.get("max_tokens") or (spec.default_max_tokens if spec else None) or 0
    return prompt + most * req.sampling.get("n", 1)


def prompt_text(req) -> str | None:
    if req.messages is None:
        return req.prompt if isinstance(req.prompt, str) else None
    return "\n".join(f"[{m.get('role')}] {m['content']}" for m in req.messages if isinstance(m.get("content"), str))


def route_of(req) -> str:
    return ROUTE_OF_KIND[req.kind]


def _redactor(config):
    """The audit log's redaction: the named regex filter, or e-mail, phone and card numbers."""
    from cluster.guards.config import RegexFilterSpec  # noqa: PLC0415

    name = config.audit.redact_with
    spec = config.guards.filters.get(name) if name else RegexFilterSpec()
    if not isinstance(spec, RegexFilterSpec):
        from cluster.sections import ConfigError  # noqa: PLC0415

        raise ConfigError(f"audit.redact_with {name!r} must name a regex filter of guards.filters")
    return RegexFilter(name or "audit", spec).redact
