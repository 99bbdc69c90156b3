"""One `Scheduler` and KV cache per attention group; each request lives in one group. Without data parallelism
there is one group, so the engine always schedules through this class.

A new request goes to the group with the fewest requests (the samples of one n > 1 request stay together, so
they share their prompt's cached blocks). Each step every group schedules on its own and the workers get every
group's `SchedulerOutput` (a rank computes its own group's and needs the others' token counts for the MoE
collectives, engine.parallel.layers).
"""

from dataclasses import fields

from engine.request import Request
from engine.scheduler import ScheduledStep, Scheduler, SchedulerStats


class DataParallelScheduler:
    def __init__(self, schedulers: list[Scheduler]):
        self.groups = schedulers
        self.where: dict[str, int] = {}  # request id -> its group
        self._last: tuple[str, int] | None = None  # (parent id, group) of the last request added

    @property
    def requests(self) -> dict[str, Request]:
        return {rid: r for s in self.groups for rid, r in s.requests.items()}

    def add(self, request: Request) -> None:
        if request.request_id in self.where:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        if self._last is not None and self._last[0] == request.parent_id:
            group = self._last[1]  # a sibling of the request just added
        else:
            group = min(range(len(self.groups)), key=lambda g: len(self.groups[g].requests))
        self.groups[group].add(request)
        self.where[request.request_id] = group
        self._last = (request.parent_id, group)

    def abort(self, request_id: str) -> Request | None:
        group = self.where.pop(request_id, None)
        return None if group is None else self.groups[group].abort(request_id)

    @property
    def has_work(self) -> bool:
        return any(s.has_work for s in self.groups)

    def schedule(self) -> list[ScheduledStep]:
        """One step per group, indexed by dp rank."""
        return [s.schedule() for s in self.groups]

    def advance(self, steps: list[ScheduledStep]) -> None:
        for s, step in zip(self.groups, steps):
            s.advance(step)

    def update(self, steps: list[ScheduledStep], sampled: dict) -> list[Request]:
        changed = [r for s, step in zip(self.groups, steps) for r in s.update(step, sampled)]
        for r in changed:
            if r.finished:
                self.where.pop(r.request_id, None)
        return changed

    def stats(self) -> SchedulerStats:
        per_group = [s.stats() for s in self.groups]
        total = {f.name: sum(getattr(st, f.name) for st in per_group) for f in fields(SchedulerStats)}
        total["kv_cache_usage"] /= len(per_group)
        return SchedulerStats(**total)
