"""Fault schedules: `gptoss loadtest run --faults SCHEDULE` runs actions against the cluster at set times of a run.

Flow: the schedule (YAML: a list of `{at: 30s, action: NAME, name: LABEL, ...params}`) -> `load_schedule` builds each
entry's `Action` (unknown names and bad parameters fail before the run starts) -> `FaultRunner.run` (beside the
generator, in the runner's event loop) sleeps until each entry's time, runs its action in a thread and records a
`FaultMark` (start, end, what it did) on the run's clock -> loadtest/accounting.py turns marks and records into the
per-fault report, and the timeline plot shades each fault.

Actions are plugins with one interface (`Action`): a class with a `name`, whether it is a `planned` operation, a
constructor taking the run's `FaultContext` and the entry's parameters, and a blocking `run()` that returns what it
did. The built-in actions (loadtest/cluster_actions.py) act on a local Ray cluster; `action: package.module:Class`
loads any other class with the same interface.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

from loadtest.accounting import FaultMark

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


@dataclass
class FaultContext:
    """What actions need to find the cluster; filled from `gptoss loadtest run` flags."""

    ray_address: str = "auto"            # the Ray cluster the application runs on
    app_name: str = "gptoss"             # the Serve application's name (the config's `name`)
    serve_config: str | None = None      # the application's config file (redeploy and scale-down start from it)
    deployed: dict | None = None         # the config an action deployed last (the next one changes that)


class Action(ABC):
    """One kind of fault. Subclasses set `name` and `planned`, check their parameters in `__init__` (raise
    ValueError naming the parameter), and do the fault in `run()`, which blocks until it is done (for planned
    operations: until the cluster runs the new state) and returns what it did (JSON-able)."""

    name: ClassVar[str]
    planned: ClassVar[bool] = False

    def __init__(self, ctx: FaultContext, **params) -> None:
        if params:
            raise ValueError(f"action {self.name!r} takes no parameter {sorted(params)[0]!r}")
        self.ctx = ctx

    @abstractmethod
    def run(self) -> dict: ...


ACTIONS: dict[str, type[Action]] = {}


def register(cls: type[Action]) -> type[Action]:
    """Class decorator: makes an Action available to schedules by its `name`."""
    ACTIONS[cls.name] = cls
    return cls


def action_class(name: str) -> type[Action]:
    """A built-in action by name, or `module:Class` imported."""
    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Action)):
            raise ValueError(f"action {name!r} is not a loadtest.faults.Action")
        return cls
    import loadtest.cluster_actions  # noqa: F401, PLC0415 - registers the built-in actions

    if name not in ACTIONS:
        raise ValueError(f"unknown fault action {name!r}; built-in: {', '.join(sorted(ACTIONS))}, or module:Class")
    return ACTIONS[name]


def parse_seconds(value) -> float:
    """30, 30s, 1m, 1m30s, 1.5m -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(str(value))
    if not match or not any(match.groups()):
        raise ValueError(f"'at' must be seconds like 30s, 1m or 1m30s, got {value!r}")
    minutes, seconds = match.groups()
    return float(minutes or 0) * 60 + float(seconds or 0)


@dataclass
class ScheduledFault:
    at_s: float          # seconds from the run's start (warm-up included)
    label: str           # shown in the report and on the timeline
    action: Action


def load_schedule(source, ctx: FaultContext) -> list[ScheduledFault]:
    """The schedule from a YAML file path, YAML text, or an already parsed list; sorted by time."""
    entries = source
    if isinstance(source, (str, Path)):
        text = Path(source).read_text() if Path(str(source)).is_file() else str(source)
        entries = yaml.safe_load(text)
    if not isinstance(entries, list):
        raise ValueError("a fault schedule is a YAML list of {at: 30s, action: NAME, ...}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "at" not in entry or "action" not in entry:
            raise ValueError(f"faults[{i}] needs 'at' and 'action', got {entry!r}")
        params = {k: v for k, v in entry.items() if k not in ("at", "action", "name")}
        at_s = parse_seconds(entry["at"])
        try:
            action = action_class(entry["action"])(ctx, **params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"faults[{i}] ({entry['action']}): {exc}") from None
        out.append(ScheduledFault(at_s, str(entry.get("name") or f"{entry['action']}@{at_s:g}s"), action))
    return sorted(out, key=lambda f: f.at_s)


class FaultRunner:
    """Runs a schedule beside the generator; `marks` holds what happened, in order."""

    def __init__(self, schedule: list[ScheduledFault]) -> None:
        self.schedule, self.marks, self.skipped = schedule, [], []

    async def run(self, t0_perf: float, stop: asyncio.Event) -> None:
        """`t0_perf`: the run's start on time.perf_counter(); faults not yet due when `stop` is set are skipped."""
        now = lambda: time.perf_counter() - t0_perf  # noqa: E731
        for i, fault in enumerate(self.schedule):
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, fault.at_s - now()))
                self.skipped = [f.label for f in self.schedule[i:]]
                return
            except TimeoutError:
                pass
            self.marks.append(await self._run_one(fault, now))

    @staticmethod
    async def _run_one(fault: ScheduledFault, now) -> FaultMark:
        action, start, detail, error = fault.action, now(), {}, ""
        try:
            detail = await asyncio.to_thread(action.run)
        except Exception as exc:  # noqa: BLE001 - a failed action is reported, and the run goes on
            error = f"{type(exc).__name__}: {exc}"[:500]
        return FaultMark(fault.label, action.name, action.planned, start, now(), detail or {}, error)
