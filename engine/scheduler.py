"""Continuous batching: which requests run this step and how many tokens each computes.

Each step spends a token budget (`max_num_batched_tokens`): running requests first, in priority order (a decode
costs one token, an unfinished prefill continues in chunks), then waiting requests while seats
(`max_num_seqs`) and budget remain, starting from their longest cached prefix. When blocks run out, the running
request with the lowest priority (latest arrival under FCFS) is preempted: its blocks go back to the pool and it
waits again at its original place, to be recomputed from its tokens so far. The scheduler never touches tensors.

Flow of a step: `schedule()` -> `ScheduledStep` (the host's view: which requests, how many tokens; and
`.output`, the plain `SchedulerOutput` the workers get) -> the workers compute it -> `update(step, sampled)`
advances each request and appends its sampled token. Under async scheduling the engine calls `advance(step)` right
after `schedule()`, before the step has run: the next `schedule()` then counts its tokens as computed and each of
its sampling requests as one token ahead (`Request.num_pending`, a PENDING token id for the worker to fill in),
so step N+1 is planned while step N runs; `update` later only appends. A request certain to finish in the step in
flight (max_tokens reached) is not scheduled again; one that stops on a stop token or string is, once, and that
step's token is dropped (the request has finished by the time it comes back).
"""

import bisect
import itertools
import time
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, Status
from engine.scheduler_output import PENDING, NewRequestData, ScheduledRequest, SchedulerOutput


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit: retry later (HTTP 429/503, gRPC RESOURCE_EXHAUSTED)."""


@dataclass
class ScheduledStep:
    """One step of one scheduler as the host keeps it until its tokens come back."""

    scheduled: list[tuple[Request, int]]  # (request, tokens to compute from its num_computed_tokens), batch order
    preempted: list[Request] = field(default_factory=list)  # sent back to waiting by this step
    output: SchedulerOutput = field(default_factory=SchedulerOutput)  # what the workers need
    advanced: bool = False  # its tokens are already counted as computed (async scheduling: `advance`)

    @property
    def num_batched_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


@dataclass
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of blocks held by requests
    prefix_cache_queries: int  # prompt tokens looked up (cumulative)
    prefix_cache_hits: int  # of which served from the cache (cumulative)
    num_preemptions: int  # cumulative
    num_free_blocks: int
    num_total_blocks: int


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config, self.kv = config, kv
        self.waiting: list[Request] = []  # sorted by _key
        self.running: list[Request] = []  # sorted by _key
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self._arrivals = itertools.count()
        self._order: dict[str, tuple] = {}
        self._known: set[str] = set()  # requests the workers hold sampling state for
        self._finished: list[str] = []  # of those, the ones gone since the last step

    def _key(self, request: Request) -> tuple:
        return self._order[request.request_id]

    # ---- admission ----
    def add(self, request: Request) -> None:
        limit = self.config.max_waiting_requests
        if limit is not None and len(self.waiting) >= limit:
            raise QueueFullError(f"{len(self.waiting)} requests are waiting (max_waiting_requests={limit}); "
                                 "retry later")
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        priority = request.params.priority if self.config.scheduling_policy == "priority" else 0
        self._order[request.request_id] = (priority, next(self._arrivals))
        self.requests[request.request_id] = request
        self._insert(self.waiting, request)

    def _insert(self, queue: list[Request], request: Request) -> None:
        bisect.insort(queue, request, key=self._key)

    def abort(self, request_id: str) -> Request | None:
        request = self.requests.get(request_id)
        if request is None:
            return None
        request.finish("abort")
        self._remove(request)
        return request

    def _remove(self, request: Request) -> None:
        for queue in (self.waiting, self.running):
            if request in queue:
                queue.remove(request)
        self.kv.free(request)
        self.requests.pop(request.request_id, None)
        self._order.pop(request.request_id, None)
        if request.request_id in self._known:
            self._known.remove(request.request_id)
            self._finished.append(request.request_id)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----
    def schedule(self) -> ScheduledStep:
        step = ScheduledStep([])
        budget = self._schedule_running(step, self.config.max_num_batched_tokens)
        if not step.preempted:
            self._schedule_waiting(step, budget)
        step.output = self._output(step)
        return step

    def _schedule_running(self, out: ScheduledStep, budget: int) -> int:
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            if request.num_pending and len(request.output_token_ids) + request.num_pending >= request.params.max_tokens:
                continue  # its last token is being sampled in the step in flight
            n = min(request.num_tokens + request.num_pending - request.num_computed_tokens, budget)
            while not self.kv.allocate(request, n):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                out.scheduled.append((request, n))
                budget -= n
        return budget

    def _preempt(self, request: Request, out: ScheduledStep) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status, request.num_computed_tokens = Status.WAITING, 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._insert(self.waiting, request)
        out.preempted.append(request)

    def _schedule_waiting(self, out: ScheduledStep, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            hit = self.kv.find_prefix(request)
            request.num_computed_tokens = hit.num_tokens
            n = min(request.num_tokens - hit.num_tokens, budget)
            if not self.kv.allocate(request, n, hit):
                request.num_computed_tokens = 0
                break
            self.kv.count_prefix(request.num_tokens, hit.num_tokens)
            if request.num_preemptions == 0:
                request.num_cached_tokens = hit.num_tokens
            self.waiting.pop(0)
            request.status = Status.RUNNING
            request.metrics.setdefault("scheduled", time.monotonic())
            self._insert(self.running, request)
            out.scheduled.append((request, n))
            budget -= n

    def _output(self, step: ScheduledStep) -> SchedulerOutput:
        """The plain data the workers need for `step` (block tables only where they changed). Finished ids wait
        for a step that runs: the engine sends nothing when nothing is scheduled."""
        out = SchedulerOutput()
        if step.scheduled:
            out.finished_request_ids, self._finished = self._finished, []
        for request, n in step.scheduled:
            rid, begin = request.request_id, request.num_computed_tokens
            if rid not in self._known:
                self._known.add(rid)
                out.new_requests.append(_new_request_data(request))
            ids = request.token_ids_between(begin, begin + n)
            ids += [PENDING] * (n - len(ids))  # the token sampled in the step in flight (async scheduling)
            table_start, block_ids = self.kv.new_blocks(request)
            out.requests.append(ScheduledRequest(rid, ids, begin, begin + n == request.num_tokens + request.num_pending,
                                                 table_start, block_ids))
        return out

    def advance(self, step: ScheduledStep) -> None:
        """Count the step's tokens as computed and its sampling requests one token ahead, before it has run."""
        for request, n in step.scheduled:
            if request.finished:  # aborted while the step ran (synchronous engine)
                continue
            if request.num_computed_tokens + n == request.num_tokens + request.num_pending:
                request.num_pending += 1
            request.num_computed_tokens += n
        step.advanced = True

    def update(self, step: ScheduledStep, sampled: dict[str, tuple[int, dict | None]]) -> list[Request]:
        """Advance the scheduled requests by what was computed (unless `advance` has); append sampled tokens;
        retire finished ones. Returns the requests with new output."""
        if not step.advanced:
            self.advance(step)
        changed = []
        for request, _ in step.scheduled:
            if request.finished:  # aborted, or stopped in the step before (async scheduling)
                continue
            if request.request_id in sampled:
                request.num_pending -= 1
                request.append(*sampled[request.request_id])
                changed.append(request)
                if request.finished:
                    self._remove(request)
        return changed

    def stats(self) -> SchedulerStats:
        pool = self.kv.pool
        return SchedulerStats(
            num_running=len(self.running), num_waiting=len(self.waiting), kv_cache_usage=pool.usage(),
            prefix_cache_queries=self.kv.prefix_queries, prefix_cache_hits=self.kv.prefix_hits,
            num_preemptions=self.num_preemptions, num_free_blocks=pool.num_free, num_total_blocks=pool.num_blocks)


def _new_request_data(request: Request) -> NewRequestData:
    params = request.params
    return NewRequestData(request.request_id, params, None if params.seed is None else params.seed + request.index,
                          request.prompt_token_ids if params.repetition_penalty != 1 else [], request.stop_ids)
