"""Per-request accounting around faults: what became of every request, and what each fault cost.

Flow: a request's record (status, when the server accepted it, the finish reason it gave) -> `classify` -> one of
OUTCOMES; the fault runner's `FaultMark`s (each action's start and end on the run's clock) + the records ->
`fault_report`: per fault, the requests in flight at its start, each outcome among the requests it touched, the
time until goodput is back at its level before the first fault, and whether the fault met its targets.

The outcomes (the promise an API makes: an accepted request finishes or fails clearly):
  completed  the stream ended with the server's finish reason
  rejected   refused before acceptance: 429 / 503 (gRPC RESOURCE_EXHAUSTED / UNAVAILABLE), with or without a retry
             hint (`retry_after_s`), or a connection the server never took
  failed     a clear error: an error status other than 429/503, an error object / gRPC status mid-stream, or a
             connection that broke (reset, closed mid-body) after the request was sent: the client sees it fail
  lost       accepted, then the stream ended cleanly without a finish reason and without an error (a silent
             truncation), or it hung past the request timeout
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

COMPLETED, REJECTED, FAILED, LOST = "completed", "rejected", "failed", "lost"
OUTCOMES = (COMPLETED, REJECTED, FAILED, LOST)
REFUSALS = ("http_429", "http_503", "connect")   # statuses that mean "not taken": the client may retry elsewhere
RECOVERY_FRACTION = 0.9   # goodput is "full" again at this fraction of its level before the first fault


def classify(rec) -> str:
    """The outcome of one finished request record (loadtest.metrics.RequestRecord)."""
    if rec.status == "ok":
        return COMPLETED if rec.finish_reason else LOST
    if rec.status in ("timeout", "stream_broken"):   # silent truncation, or a hang
        return LOST
    if rec.status in REFUSALS and rec.accepted != rec.accepted:   # NaN: never accepted
        return REJECTED
    return FAILED


@dataclass
class FaultMark:
    """One fault action on the run's timeline (seconds from the run's start, the records' clock)."""

    label: str                 # the schedule entry's name (default: the action and its time)
    action: str                # the action plugin's name
    planned: bool              # a planned operation (upgrade, scale-down, drain) or an unplanned fault
    start: float               # when the action began
    end: float                 # when it returned (for planned operations: when the cluster was running again)
    detail: dict = field(default_factory=dict)   # what it did: the replica, pid, node, ...
    error: str = ""            # the action itself failed (then the fault did not happen as scheduled)

    def to_dict(self) -> dict:
        return asdict(self)


def counts(records) -> dict:
    """Outcome counts of `records`, plus rejections that carried no retry hint."""
    out = dict.fromkeys(OUTCOMES, 0) | Counter(r.outcome or classify(r) for r in records)
    out["rejected_without_retry_hint"] = sum(1 for r in records if (r.outcome or classify(r)) == REJECTED
                                             and r.retry_after_s != r.retry_after_s)
    return out


def good(rec) -> bool:
    return bool(rec.good) and (rec.outcome or classify(rec)) == COMPLETED


def in_flight_at(records, t: float) -> list:
    """Requests due before t (their scheduled time: a request the generator was late to send counts) that had not
    ended by t."""
    return [r for r in records if r.scheduled < t < r.done]


def baseline_fraction(records, start: float, end: float, ended_by: float = math.inf) -> float:
    """The fraction of requests scheduled in [start, end) (and ended by `ended_by`) that completed meeting every
    SLO (NaN: none)."""
    window = [r for r in records if start <= r.scheduled < end and not r.done > ended_by]
    return sum(good(r) for r in window) / len(window) if window else math.nan


def recovery_s(records, start: float, stop: float, baseline: float, window_s: float) -> float | None:
    """Seconds from `start` until goodput is full again: the earliest t from which every window of `window_s`
    seconds (by scheduled time, stepping window_s / 5) up to `stop` has a good fraction of at least
    RECOVERY_FRACTION x `baseline`. None when the last window before `stop` still falls short (or none fits)."""
    if not baseline == baseline:
        return None
    step = window_s / 5
    starts = [start + i * step for i in range(int(max(0.0, stop - start - window_s) / step) + 1)]
    recovered = None
    for t in starts:
        fraction = baseline_fraction(records, t, t + window_s)
        if fraction == fraction and fraction >= RECOVERY_FRACTION * baseline:
            recovered = t if recovered is None else recovered
        else:
            recovered = None
    return None if recovered is None else recovered - start


def fault_report(records, marks: list[FaultMark], end: float, window_s: float = 5.0,
                 warmup_s: float = 0.0) -> list[dict]:
    """Per fault: requests in flight at its start, the outcomes of the requests it touched (each request belongs to
    the last fault that began before it ended), the time to full goodput, the clear errors' latest end."""
    marks = sorted(marks, key=lambda m: m.start)
    first = marks[0].start if marks else end
    baseline = baseline_fraction(records, warmup_s, first, ended_by=first)   # untouched by any fault
    starts = [m.start for m in marks]
    owner = {id(r): max((i for i, s in enumerate(starts) if s < r.done), default=None) for r in records}
    out = []
    for i, mark in enumerate(marks):
        stop = starts[i + 1] if i + 1 < len(marks) else end
        flying = in_flight_at(records, mark.start)
        touched = [r for r in records if owner[id(r)] == i]
        failed_ends = [r.done - mark.start for r in flying if (r.outcome or classify(r)) == FAILED]
        waiting = [r for r in flying if not r.accepted < mark.start]   # no first token yet when the fault began
        out.append(mark.to_dict() | {
            "window": [mark.start, stop], "requests": len(touched), "in_flight_at_start": len(flying),
            "in_flight_outcomes": counts(flying), "outcomes": counts(touched),
            "outcomes_by_target": {t: counts([r for r in touched if r.target == t])
                                   for t in sorted({r.target for r in touched})},
            "baseline_good_fraction": baseline,
            "recovery_s": recovery_s(records, mark.start, stop, baseline, window_s),
            "failed_in_flight_ended_within_s": max(failed_ends) if failed_ends else None,
            "in_flight_without_first_token": len(waiting),
            "of_which_completed": sum((r.outcome or classify(r)) == COMPLETED for r in waiting),
        })
    return out


def targets(fault: dict, recovery_limit_s: float = 60.0) -> dict[str, bool]:
    """The targets for one fault's report: planned operations cost nothing (0 lost, 0 failed, 0 rejected);
    unplanned faults lose nothing, the requests in flight without a first token complete (retried), and goodput is
    full again within `recovery_limit_s`."""
    o = fault["outcomes"]
    if fault["planned"]:
        return {"0 lost": o[LOST] == 0, "0 failed": o[FAILED] == 0, "0 rejected": o[REJECTED] == 0}
    rec = fault["recovery_s"]
    waiting_done = fault.get("of_which_completed") == fault.get("in_flight_without_first_token")
    return {"0 lost": o[LOST] == 0, "no first token yet: completed": waiting_done,
            f"recovered within {recovery_limit_s:g} s": rec is not None and rec <= recovery_limit_s}
