"""Continuous batching: which requests run this step and how many tokens each computes.

Each step spends a token budget (`max_num_batched_tokens`): running requests first, in priority order (a decode
costs one token, an unfinished prefill continues in chunks), then waiting requests while seats
(`max_num_seqs`) and budget remain, starting from their longest cached prefix. When blocks run out, the running
request with the lowest priority (latest arrival under FCFS) is preempted: its blocks go back to the pool and it
waits again at its original place, to be recomputed from its tokens so far. The scheduler never touches tensors.
"""

import bisect
import itertools
import time
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, Status


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit: retry later (HTTP 429/503, gRPC RESOURCE_EXHAUSTED)."""


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Request, int]]  # (request, tokens to compute from its num_computed_tokens), batch order
    preempted: list[Request] = field(default_factory=list)

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

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput([])
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate(request, n):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                out.scheduled.append((request, n))
                budget -= n
        return budget

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status, request.num_computed_tokens = Status.WAITING, 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._insert(self.waiting, request)
        out.preempted.append(request)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
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

    def update(self, out: SchedulerOutput, sampled: dict[str, tuple[int, dict | None]]) -> list[Request]:
        """Advance the scheduled requests by what was computed; append sampled tokens; retire finished ones.
        Returns the requests with new output."""
        changed = []
        for request, n in out.scheduled:
            if request.finished:  # aborted while the step ran
                continue
            request.num_computed_tokens += n
            if request.request_id in sampled:
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
