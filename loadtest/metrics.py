"""Per-request records, the histograms every generator process fills, and the summary of a load point.

record (one request, times in s from the run's start) -> MetricSet.add (histograms in ms, mergeable across
processes) -> summarize (percentiles, throughputs, goodput, errors, lag). The formulas are in loadtest/README.md and
in FORMULAS below, which is copied into every result file.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields

from loadtest.accounting import counts
from loadtest.histogram import Histogram
from loadtest.target import Accepted, Event, Finish, Usage

NAN = math.nan

FORMULAS = {
    "clock": "all times from the request's SCHEDULED send time t_sched (open loop: the arrival process; closed "
             "loop: when its worker became free); t_sent is when the generator actually started it",
    "send_lag_ms": "t_sent - t_sched (the generator's own lateness; large values mean it fell behind)",
    "ttft_ms": "t_first_token(any channel, reasoning or final) - t_sched",
    "ttft_final_ms": "t_first_token(final channel) - t_sched",
    "itl_chunk_ms": "t_chunk[i] - t_chunk[i-1] for every streamed chunk i >= 1 of a request",
    "itl_token_ms": "(t_chunk[i] - t_chunk[i-1]) / n_tokens(chunk i), recorded n_tokens(chunk i) times",
    "tpot_ms": "(t_last_token - t_first_token) / (output_tokens - n_tokens(first chunk)); undefined when the "
               "denominator is 0",
    "e2e_ms": "t_done (stream end) - t_sched",
    "output_tokens": "usage.completion_tokens when reported (reasoning included), else the sum of chunk token counts",
    "reasoning_tokens": "usage.completion_tokens_details.reasoning_tokens when reported, else the token count of "
                        "reasoning deltas",
    "window_s": "max(t_done) - min(t_sched) over the measured (non-warm-up) requests",
    "request_throughput_rps": "successful requests / window_s",
    "input_tok_s, output_tok_s, reasoning_tok_s": "sum over successful requests / window_s",
    "goodput_rps": "successful requests meeting every set SLO (ttft, ttft_final, tpot, e2e) / window_s",
    "good_fraction": "requests meeting every SLO / all measured requests (errors count as not meeting)",
    "outcomes": "completed (ended with a finish reason), rejected (429/503 or no connection, before acceptance), "
                "failed (a clear error status or error mid-stream), lost (accepted or sent, then ended without a "
                "finish reason or an error, or hung past the request timeout); see loadtest/accounting.py",
    "percentiles": "nearest rank over 1%-wide log buckets (merged exactly across generator processes)",
}

HISTOGRAMS = ("ttft_ms", "ttft_final_ms", "itl_chunk_ms", "itl_token_ms", "tpot_ms", "e2e_ms", "send_lag_ms")


@dataclass
class Slo:
    ttft_ms: float | None = None          # TTFT of any channel
    ttft_final_ms: float | None = None    # TTFT of the answer (final channel)
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    attainment: float = 0.9               # a load point passes when good_fraction >= this

    def meets(self, rec: RequestRecord) -> bool:
        if rec.status != "ok" or rec.outcome not in ("", "completed"):   # a stream without its finish is lost
            return False
        for name in ("ttft_ms", "ttft_final_ms", "tpot_ms", "e2e_ms"):
            bound, value = getattr(self, name), getattr(rec, name)
            undefined_ok = name == "tpot_ms"      # a one-chunk answer has no TPOT to miss
            if bound is not None and (value > bound if value == value else not undefined_ok):
                return False
        return True


@dataclass
class RequestRecord:
    """One request; times are seconds from the run's start, NaN when the event never happened."""

    request_id: str
    session_id: str = ""
    turn: int = 0
    group: int = -1
    worker: int = 0
    warmup: bool = False
    scheduled: float = NAN
    sent: float = NAN
    first_token: float = NAN
    first_final: float = NAN
    last_token: float = NAN
    done: float = NAN
    status: str = "ok"                    # 'ok' or one of target.ERROR_KINDS
    http_status: int = 0
    error: str = ""
    accepted: float = NAN                 # when the server accepted it (200 headers / gRPC metadata); NaN: never
    finish_reason: str = ""               # the server's finish reason; "" when the stream gave none
    retry_after_s: float = NAN            # the retry hint of a refusal (Retry-After / retry-after-ms); NaN: none
    outcome: str = ""                     # accounting.classify: completed, rejected, failed or lost
    target: str = ""                      # the target that sent it (http-chat, grpc-chat, ...)
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    chunks: int = 0
    good: bool = False                    # met every SLO
    chunk_times: list[float] = field(default_factory=list, repr=False)    # not written to CSV
    chunk_tokens: list[int] = field(default_factory=list, repr=False)

    ttft_ms = property(lambda s: (s.first_token - s.scheduled) * 1e3)
    ttft_final_ms = property(lambda s: (s.first_final - s.scheduled) * 1e3)
    e2e_ms = property(lambda s: (s.done - s.scheduled) * 1e3)
    send_lag_ms = property(lambda s: (s.sent - s.scheduled) * 1e3)

    @property
    def tpot_ms(self) -> float:
        rest = self.output_tokens - (self.chunk_tokens[0] if self.chunk_tokens else 0)
        return (self.last_token - self.first_token) * 1e3 / rest if rest > 0 else NAN

    def row(self) -> dict:
        """The CSV row: stored fields (not the chunk lists) plus the derived latencies."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("chunk_")}
        out |= {name: getattr(self, name) for name in ("ttft_ms", "ttft_final_ms", "tpot_ms", "e2e_ms",
                                                        "send_lag_ms")}
        return out

    def stripped(self) -> RequestRecord:
        """A copy without the chunk lists, cheap to send between processes."""
        return RequestRecord(**{f.name: getattr(self, f.name) for f in fields(self)
                                if not f.name.startswith("chunk_")})


class StreamTally:
    """Folds one request's Delta and Usage events into its record; deltas stamped at the same instant are one
    chunk (a chat chunk may carry reasoning and content together)."""

    def __init__(self, rec: RequestRecord, t0: float, count_tokens) -> None:
        self.rec, self.t0, self.count_tokens = rec, t0, count_tokens
        self.answer: list[str] = []
        self.reasoning_counted = 0
        self.usage: Usage | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Usage):
            self.usage = event
            return
        if isinstance(event, Accepted):
            self.rec.accepted = event.t - self.t0
            return
        if isinstance(event, Finish):
            self.rec.finish_reason = event.reason
            return
        rec, t, n = self.rec, event.t - self.t0, self.count_tokens(event.text)
        if rec.chunk_times and rec.chunk_times[-1] == t:
            rec.chunk_tokens[-1] += n
        else:
            rec.chunk_times.append(t)
            rec.chunk_tokens.append(n)
        if rec.first_token != rec.first_token:
            rec.first_token = t
        if event.channel == "final":
            self.answer.append(event.text)
            if rec.first_final != rec.first_final:
                rec.first_final = t
        else:
            self.reasoning_counted += n
        rec.last_token = t

    def finish(self, done: float) -> None:
        rec, u = self.rec, self.usage
        rec.done, rec.chunks = done - self.t0, len(rec.chunk_times)
        counted = sum(rec.chunk_tokens)
        rec.output_tokens = u.completion_tokens if u and u.completion_tokens is not None else counted
        rec.reasoning_tokens = (u.reasoning_tokens if u and u.reasoning_tokens is not None
                                else min(self.reasoning_counted, rec.output_tokens))
        if u and u.prompt_tokens is not None:
            rec.input_tokens = u.prompt_tokens

    @property
    def answer_text(self) -> str:
        return "".join(self.answer)


@dataclass
class MetricSet:
    """The histograms (ms) of one generator process's measured requests; merge() adds another exactly."""

    hists: dict[str, Histogram] = field(default_factory=lambda: {name: Histogram() for name in HISTOGRAMS})

    def add(self, rec: RequestRecord) -> None:
        self.hists["send_lag_ms"].record(max(0.0, rec.send_lag_ms))
        if rec.status != "ok":
            return
        for name in ("ttft_ms", "ttft_final_ms", "tpot_ms", "e2e_ms"):
            self.hists[name].record(getattr(rec, name))
        for i in range(1, len(rec.chunk_times)):
            gap = (rec.chunk_times[i] - rec.chunk_times[i - 1]) * 1e3
            n = max(1, rec.chunk_tokens[i])
            self.hists["itl_chunk_ms"].record(gap)
            self.hists["itl_token_ms"].record(gap / n, n)

    def merge(self, other: MetricSet) -> MetricSet:
        for name, h in other.hists.items():
            self.hists[name].merge(h)
        return self

    def to_dict(self) -> dict:
        return {name: h.to_dict() for name, h in self.hists.items()}

    @classmethod
    def from_dict(cls, d: dict) -> MetricSet:
        return cls({name: Histogram.from_dict(h) for name, h in d.items()})


def summarize(metrics: MetricSet, records: list[RequestRecord], slo: Slo) -> dict:
    """The numbers of one load point from its merged histograms and its measured (non-warm-up) records."""
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.status == "ok"]
    window = (max(r.done for r in measured) - min(r.scheduled for r in measured)) if measured else NAN
    per_s = (lambda x: x / window) if window and window > 0 else (lambda x: NAN)
    good = sum(r.good for r in measured)
    out = {
        "requests": len(measured), "completed": len(ok), "failed": len(measured) - len(ok),
        "errors": dict(sorted(Counter(r.status for r in measured if r.status != "ok").items())),
        "outcomes": counts(measured),
        "window_s": window,
        "request_throughput_rps": per_s(len(ok)),
        "input_tok_s": per_s(sum(r.input_tokens for r in ok)),
        "output_tok_s": per_s(sum(r.output_tokens for r in ok)),
        "reasoning_tok_s": per_s(sum(r.reasoning_tokens for r in ok)),
        "goodput_rps": per_s(good),
        "good_fraction": good / len(measured) if measured else NAN,
        "meets_slo": bool(measured) and good / len(measured) >= slo.attainment,
    }
    out |= {name: metrics.hists[name].summary() for name in HISTOGRAMS}
    return out
