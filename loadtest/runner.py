"""Runs a load test: for each load point, start the generator processes together, show progress, scrape metrics,
then merge their records and histograms into one summary; over a sweep, find the highest load meeting the SLOs.

faults:    parent runs the fault schedule (faults.py) beside the workers; its marks + the records -> accounting.py
processes: parent --(config, point, index)--> P workers (spawned; each builds its workload, says ready)
           parent --(shared start time)--> workers run --(records, MetricSet)--> parent merges (exact)
With one process the worker runs in the parent's event loop.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass, field

from loadtest.accounting import FaultMark, fault_report
from loadtest.config import LoadPoint, RunConfig
from loadtest.faults import FaultRunner, load_schedule
from loadtest.metrics import MetricSet, RequestRecord, summarize
from loadtest.progress import FIELDS, Counters, show_progress
from loadtest.prometheus import Scraper
from loadtest.worker import Worker, WorkerResult

START_DELAY_S = 0.2    # between fixing the start time and the first scheduled request


@dataclass
class PointResult:
    point: LoadPoint
    records: list[RequestRecord]          # all processes, warm-up included
    metrics: MetricSet                    # merged histograms of the measured requests
    summary: dict
    timeline: list[tuple[float, dict]] = field(default_factory=list)   # Prometheus samples
    warnings: list[str] = field(default_factory=list)
    faults: list[FaultMark] = field(default_factory=list)   # the fault actions that ran, on the records' clock


@dataclass
class RunResult:
    config: RunConfig
    points: list[PointResult]
    best: LoadPoint | None                # highest load whose good_fraction met the SLO attainment


def run(config: RunConfig, target_factory=None) -> RunResult:
    """Runs every load point in order. `target_factory(config)` replaces the HTTP target (one process only)."""
    results = [asyncio.run(run_point(config, point, target_factory)) for point in config.points()]
    passing = [r.point for r in results if r.summary["meets_slo"]]
    return RunResult(config, results, max(passing, key=lambda p: p.value) if passing else None)


async def run_point(config: RunConfig, point: LoadPoint, target_factory=None) -> PointResult:
    counters = mp.get_context("spawn").Array("d", config.processes * len(FIELDS), lock=False)
    stop = asyncio.Event()
    scraper = Scraper(config.metrics_url, config.metric_names, config.scrape_interval_s) if config.metrics_url \
        else None
    faults = FaultRunner(load_schedule(config.faults, config.fault_context)) if config.faults else None
    if config.processes == 1:
        worker = Worker(config, point, 0, Counters(counters, 0), target_factory(config) if target_factory else None)
        freeze_heap()
        t0_wall = time.time() + START_DELAY_S
        side = _side_tasks(config, point, counters, scraper, faults, t0_wall, stop)
        results = [await worker.run(t0_wall)]
    else:
        if target_factory is not None:
            raise ValueError("a custom target runs in one process only; use processes=1")
        results, side = await _run_processes(config, point, counters, scraper, faults, stop)
    stop.set()
    await asyncio.gather(*side)
    gc.unfreeze()
    result = merge(config, point, results, scraper.samples if scraper else [], faults.marks if faults else [])
    if faults and faults.skipped:
        result.warnings.append(f"faults not run (the load ended first): {', '.join(faults.skipped)}")
    return result


def _side_tasks(config: RunConfig, point: LoadPoint, counters, scraper: Scraper | None,
                faults: FaultRunner | None, t0_wall: float, stop: asyncio.Event) -> list[asyncio.Task]:
    """The progress display, the metrics scraper and the fault schedule, running beside the workers until `stop`."""
    tasks = []
    t0_perf = time.perf_counter() + (t0_wall - time.time())
    if config.progress:
        tasks.append(asyncio.create_task(show_progress(counters, config.processes, str(point), stop)))
    if scraper:
        tasks.append(asyncio.create_task(scraper.run(t0_perf, stop)))
    if faults:
        tasks.append(asyncio.create_task(faults.run(t0_perf, stop)))
    return tasks


async def _run_processes(config: RunConfig, point: LoadPoint, counters, scraper: Scraper | None,
                         faults: FaultRunner | None, stop: asyncio.Event):
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Value("d", 0.0)
    go = ctx.Event()
    procs = [ctx.Process(target=_worker_main, args=(config, point, i, counters, ready, go, start, results),
                         daemon=True) for i in range(config.processes)]
    for p in procs:
        p.start()
    loop = asyncio.get_running_loop()
    for _ in procs:
        await loop.run_in_executor(None, _get_alive, ready, procs)
    start.value = time.time() + START_DELAY_S
    go.set()
    side = _side_tasks(config, point, counters, scraper, faults, start.value, stop)
    out = [await loop.run_in_executor(None, _get_alive, results, procs) for _ in procs]
    for p in procs:
        p.join(timeout=5)
    return out, side


def freeze_heap() -> None:
    """Moves every object alive now (tokenizer, imported libraries) out of the garbage collector's sight, so a
    full collection during the run does not stall the event loop for tens of ms (seen as send lag)."""
    gc.collect()
    gc.freeze()


def _get_alive(q, procs):
    """q.get(), but raise if a worker process died before putting its message."""
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"generator process {dead[0].pid} exited with code {dead[0].exitcode}")


def _worker_main(config, point, index, counters, ready, go, start, results) -> None:
    worker = Worker(config, point, index, Counters(counters, index))
    freeze_heap()
    ready.put(index)
    go.wait()
    results.put(asyncio.run(worker.run(start.value)))


def merge(config: RunConfig, point: LoadPoint, results: list[WorkerResult], timeline: list,
          marks: list[FaultMark] = ()) -> PointResult:
    """One PointResult from the workers': records concatenated, histograms merged exactly, warnings derived, and
    with faults, the per-fault report (accounting.fault_report) in the summary."""
    results = sorted(results, key=lambda r: r.index)
    metrics = MetricSet()
    for r in results:
        metrics.merge(r.metrics)
    records = [rec for r in results for rec in r.records]
    summary = summarize(metrics, records, config.slo)
    summary["offered_load"] = {"mode": point.mode, "value": point.value}
    summary["tokenizer"] = results[0].tokenizer
    if marks:
        end = max((r.done for r in records if r.done == r.done), default=0.0)
        summary["faults"] = fault_report(records, list(marks), end, config.recovery_window_s, config.warmup_s)
    return PointResult(point, records, metrics, summary, timeline, warnings(config, point, summary), list(marks))


def warnings(config: RunConfig, point: LoadPoint, summary: dict) -> list[str]:
    out = []
    lag = summary["send_lag_ms"]
    if point.mode == "rate" and lag["count"] and lag["p99"] > config.lag_warn_ms:
        out.append(f"{point}: the generator fell behind its schedule: send lag p99 {lag['p99']:.1f} ms, max "
                   f"{lag['max']:.1f} ms (> {config.lag_warn_ms:g} ms). Latencies are measured from the scheduled "
                   f"times so they include this lag; add --processes or lower the rate to measure the server alone.")
    if summary["failed"]:
        out.append(f"{point}: {summary['failed']} of {summary['requests']} requests failed: {summary['errors']}")
    if not summary["requests"]:
        out.append(f"{point}: no measured requests (is --warmup longer than --duration?)")
    for fault in summary.get("faults", []):
        if fault["error"]:
            out.append(f"{point}: fault {fault['label']} did not run as scheduled: {fault['error']}")
    return out
