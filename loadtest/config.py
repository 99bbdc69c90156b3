"""The configuration of one load test run: the single source the CLI fills and the result file records.

A run is one or more load points (one rate or concurrency, or a sweep of them); each point runs warm-up then the
measured part, split over `processes` generator processes whose histograms merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from loadtest.arrivals import ARRIVALS
from loadtest.faults import FaultContext
from loadtest.metrics import Slo
from loadtest.workload import WorkloadSpec

DEFAULT_METRIC_NAMES = {"queue_depth": "gptoss_num_requests_waiting", "kv_cache_usage": "gptoss_kv_cache_usage_perc"}


@dataclass(frozen=True)
class LoadPoint:
    mode: str        # 'rate' (open loop, requests/s) or 'concurrency' (closed loop, requests in flight)
    value: float

    def __str__(self) -> str:
        return f"{self.value:g} req/s" if self.mode == "rate" else f"concurrency {self.value:g}"


@dataclass
class RunConfig:
    url: str                                   # base URL of the server; the only host traffic goes to
    model: str                                 # the `model` field of each request
    api: str = "chat"                          # chat or completions
    api_key: str | None = field(default=None, repr=False)   # sent as a bearer token; never written to results
    concurrency: int | None = None             # closed loop with this many requests in flight
    rate: float | None = None                  # open loop at this many requests/s
    arrival: str = "poisson"                   # poisson, gamma or constant inter-arrival gaps
    burstiness: float = 1.0                    # gamma shape: < 1 burstier than Poisson, > 1 smoother
    sweep_rates: list[float] = field(default_factory=list)        # open-loop points, ascending
    sweep_concurrency: list[int] = field(default_factory=list)    # closed-loop points, ascending
    duration_s: float | None = None            # measured seconds per point (after warm-up); inf with num_requests
    num_requests: int | None = None            # measured requests per point (turns count one each)
    warmup_s: float = 0.0                      # requests scheduled earlier than this are run but not measured
    ramp_up_s: float = 0.0                     # rate or concurrency rises linearly from 0 over this many seconds
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    slo: Slo = field(default_factory=Slo)
    processes: int = 1                         # generator processes; each takes 1/P of the rate or concurrency
    request_timeout_s: float = 300.0           # a request still streaming after this counts as 'timeout'
    ignore_eos: bool = False                   # send ignore_eos (vLLM/SGLang) so outputs run to max_tokens
    extra_body: dict = field(default_factory=dict)   # merged into every request body (e.g. reasoning_effort)
    tokenizer: Any = "auto"                    # 'auto', 'o200k', 'words', or an object with encode/decode
    metrics_url: str | None = None             # Prometheus endpoint to scrape during the run (None: no scraping)
    metric_names: dict = field(default_factory=lambda: dict(DEFAULT_METRIC_NAMES))
    scrape_interval_s: float = 1.0
    lag_warn_ms: float = 10.0                  # warn when p99 send lag exceeds this (open loop)
    progress: bool = True                      # live status line on stderr
    seed: int = 0
    faults: list = field(default_factory=list)    # the fault schedule's entries (loadtest/faults.py), one point only
    fault_context: FaultContext = field(default_factory=FaultContext)   # where the fault actions find the cluster
    recovery_window_s: float = 5.0             # goodput window of the per-fault recovery time (accounting.py)

    def __post_init__(self) -> None:
        loads = [x for x in (self.concurrency, self.rate, self.sweep_rates or None, self.sweep_concurrency or None)
                 if x is not None]
        if len(loads) > 1:
            raise ValueError("give one of --concurrency, --rate, --sweep-rates or --sweep-concurrency")
        if not loads:
            self.concurrency = 1
        if self.duration_s is None:
            self.duration_s = math.inf if self.num_requests else 60.0
        if self.arrival not in ARRIVALS:
            raise ValueError(f"--arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if self.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {self.processes}")
        if self.faults and len(self.points()) != 1:
            raise ValueError("--faults runs with one load point (--rate or --concurrency), not a sweep")
        for p in self.points():
            if p.value <= 0:
                raise ValueError(f"load must be > 0, got {p}")
            if p.mode == "concurrency" and p.value < self.processes:
                raise ValueError(f"{p} is less than --processes {self.processes}; lower --processes")

    def points(self) -> list[LoadPoint]:
        if self.sweep_rates:
            return [LoadPoint("rate", float(r)) for r in sorted(self.sweep_rates)]
        if self.sweep_concurrency:
            return [LoadPoint("concurrency", float(c)) for c in sorted(self.sweep_concurrency)]
        if self.rate is not None:
            return [LoadPoint("rate", float(self.rate))]
        return [LoadPoint("concurrency", float(self.concurrency))]

    def to_dict(self) -> dict:
        """What the result file records: everything but the API key; a tokenizer object by its type name."""
        tokenizer = self.tokenizer if isinstance(self.tokenizer, str) else type(self.tokenizer).__name__
        d = asdict(replace(self, tokenizer=tokenizer, api_key=None))   # asdict would deep-copy a tokenizer object
        d.pop("api_key")
        return d | {"api_key_set": self.api_key is not None}
