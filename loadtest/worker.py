"""One generator process's share of one load point: schedule -> sessions -> target -> records and histograms.

Open loop: sessions start at arrival times drawn ahead of time; each is started as its own task the moment it is
due, so a slow server never delays later sends, and every latency is measured from the scheduled time (a generator
that falls behind shows up as send lag). Closed loop: N workers each start a session when the previous one ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from loadtest.accounting import classify
from loadtest.arrivals import arrival_times, worker_starts
from loadtest.config import LoadPoint, RunConfig
from loadtest.metrics import MetricSet, RequestRecord, StreamTally
from loadtest.progress import Counters
from loadtest.target import RoundRobin, Target, TargetError, TargetRequest
from loadtest.tokenizer import load_tokenizer, tokenizer_name
from loadtest.workload import History, Session, Turn, Workload


@dataclass
class WorkerResult:
    index: int
    records: list[RequestRecord]     # every request, warm-up included, without chunk lists
    metrics: MetricSet               # histograms of the measured requests
    tokenizer: str                   # which tokenizer counted tokens


def make_target(config: RunConfig, url: str | None = None) -> Target:
    """HTTP for http(s):// URLs, the gRPC gateway's Chat for grpc://HOST:PORT; several URLs (comma-separated) take
    requests in turn."""
    url = url or config.url
    if "," in url:
        return RoundRobin([make_target(config, u.strip()) for u in url.split(",") if u.strip()])
    if url.startswith("grpc://"):
        from loadtest.grpc_target import GrpcTarget

        return GrpcTarget(url, config.model, config.api_key, config.request_timeout_s, config.ignore_eos, config.api)
    from loadtest.http_target import HttpTarget

    return HttpTarget(url, config.model, config.api, config.api_key, config.request_timeout_s,
                      config.extra_body, config.ignore_eos)


class Worker:
    """Built (tokenizer, workload, target) before the start time is fixed, then `run(t0_wall)` once."""

    def __init__(self, config: RunConfig, point: LoadPoint, index: int, counters: Counters,
                 target: Target | None = None) -> None:
        self.config, self.point, self.index, self.counters = config, point, index, counters
        self.target = target or make_target(config)
        self.share = 1.0 / config.processes
        tok = config.tokenizer if not isinstance(config.tokenizer, str) else load_tokenizer(config.tokenizer)
        self.count_tokens = lambda text: len(tok.encode(text))
        self.tokenizer_name = tokenizer_name(tok)
        self.workload = Workload(config.workload, tok, seed_offset=index)
        self.metrics, self.records = MetricSet(), []
        self.planned = 0                     # measured requests this process has committed to send
        self.limit = self._share_of(config.num_requests) if config.num_requests else None
        self.tasks: set[asyncio.Task] = set()
        self.t0 = 0.0

    async def run(self, t0_wall: float) -> WorkerResult:
        warm = getattr(self.target, "warm", None)  # optional: the target's first-use costs, before the clock
        if warm is not None:
            await warm()
        self.t0 = time.perf_counter() + (t0_wall - time.time())
        try:
            await (self._open_loop() if self.point.mode == "rate" else self._closed_loop())
        finally:
            await self.target.aclose()
        return WorkerResult(self.index, self.records, self.metrics, self.tokenizer_name)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def _sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    def _may_start(self, t: float, session: Session) -> bool:
        """Whether a session scheduled at t fits the duration and request-count bounds (and commits it)."""
        cfg = self.config
        if t >= cfg.warmup_s + cfg.duration_s:
            return False
        if t >= cfg.warmup_s:
            if self.limit is not None and self.planned >= self.limit:
                return False
            self.planned += len(session.turns)
        return True

    async def _open_loop(self) -> None:
        cfg, p = self.config, self.config.processes
        times = arrival_times(self.point.value * self.share, cfg.arrival, cfg.burstiness, cfg.ramp_up_s,
                              seed=cfg.seed * 7919 + self.index, phase=self.index / p)
        for n, t in enumerate(times):
            session = self.workload.next_session(f"{self.index}-{n}")
            if not self._may_start(t, session):
                break
            await self._sleep_until(t)
            task = asyncio.create_task(self._run_session(session, t))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        await asyncio.gather(*self.tasks)

    async def _closed_loop(self) -> None:
        cfg, p = self.config, self.config.processes
        starts = worker_starts(int(self.point.value), cfg.ramp_up_s)[self.index::p]
        await asyncio.gather(*(self._loop_worker(start) for start in starts))

    async def _loop_worker(self, start: float) -> None:
        await self._sleep_until(start)
        while True:
            t = self.now()
            session = self.workload.next_session(f"{self.index}-{self.workload.count}")
            if not self._may_start(t, session):
                return
            await self._run_session(session, t)

    async def _run_session(self, session: Session, scheduled: float) -> None:
        """Runs the turns in order; turn k+1 is scheduled when turn k ends and carries its answer."""
        history = History()
        for k, turn in enumerate(session.turns):
            rec = await self._run_request(session, k, turn, history, scheduled)
            if rec.status != "ok":
                return
            scheduled = rec.done

    async def _run_request(self, session: Session, k: int, turn: Turn, history: History,
                           scheduled: float) -> RequestRecord:
        rec = RequestRecord(f"{session.session_id}-{k}", session.session_id, k, session.group, self.index,
                            scheduled < self.config.warmup_s, scheduled, self.now(), input_tokens=turn.input_tokens)
        self.counters.add("sent")
        messages = history.request_messages(turn)
        req = TargetRequest(rec.request_id, self.config.model, messages, history.prompt_text(turn), turn.max_tokens)
        tally = StreamTally(rec, self.t0, self.count_tokens)
        await self._stream(req, rec, tally)
        rec.target = req.target or self.target.name
        tally.finish(time.perf_counter())
        history.add(messages, tally.answer_text)
        self._record(rec)
        return rec

    async def _stream(self, req: TargetRequest, rec: RequestRecord, tally: StreamTally) -> None:
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                async for event in self.target.stream(req):
                    tally.add(event)
        except TargetError as exc:
            rec.status, rec.http_status, rec.error = exc.kind, exc.status or 0, exc.message[:200]
            rec.retry_after_s = math.nan if exc.retry_after_s is None else exc.retry_after_s
        except TimeoutError:
            rec.status, rec.error = "timeout", f"no end of stream after {self.config.request_timeout_s} s"
        except Exception as exc:  # a target bug must not stop the run; it is counted and reported
            rec.status, rec.error = "stream_error", f"{type(exc).__name__}: {exc}"[:200]

    def _record(self, rec: RequestRecord) -> None:
        rec.outcome = classify(rec)
        rec.good = self.config.slo.meets(rec)
        if not rec.warmup:
            self.metrics.add(rec)
        self.records.append(rec.stripped())
        self.counters.add("done")
        self.counters.add("tokens", rec.output_tokens)
        if rec.status != "ok":
            self.counters.add(rec.status)

    def _share_of(self, total: int) -> int:
        p = self.config.processes
        return total // p + (1 if self.index < total % p else 0)
