"""Prometheus metrics: the single source of every metric name the cluster exports (alerts and dashboards use these).

Flow: each LLM replica records into its own registry (`ReplicaMetrics`: request counters and latency histograms
observed as outputs stream, engine gauges read from `AsyncLLM.stats()` at collect time) -> every
`metrics_push_interval_s` it pushes a plain-data snapshot to the `MetricsHub` deployment -> `GET /metrics` on the
ingress renders all live snapshots as one exposition, so one scrape target yields every replica's series, labelled
`model_name` and `replica`. Names follow vLLM's (`vllm:` -> `gptoss_`).
"""

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

LABELS = ("model_name", "replica")

# name -> (type, help). Counters are listed under their exposed name (with `_total`), histograms under their base
# name (exposed as `_bucket`, `_sum`, `_count`).
GAUGES = {
    "gptoss_num_requests_running": "requests in the engine's running batch",
    "gptoss_num_requests_waiting": "requests waiting to be scheduled",
    "gptoss_kv_cache_usage_perc": "fraction of KV-cache blocks in use (0..1)",
}
COUNTERS = {
    "gptoss_prefix_cache_queries_total": "prompt tokens looked up in the prefix cache",
    "gptoss_prefix_cache_hits_total": "prompt tokens served from the prefix cache",
    "gptoss_num_preemptions_total": "requests preempted for lack of KV blocks",
    "gptoss_prompt_tokens_total": "prompt tokens of finished requests",
    "gptoss_generation_tokens_total": "generated tokens",
    "gptoss_request_success_total": "finished requests by finished_reason (stop, length, abort)",
}
HISTOGRAMS = {
    "gptoss_time_to_first_token_seconds": "arrival to first generated token",
    "gptoss_inter_token_latency_seconds": "time between successive generated tokens",
    "gptoss_e2e_request_latency_seconds": "arrival to last token",
    "gptoss_request_queue_time_seconds": "arrival to first scheduled",
    "gptoss_request_prefill_time_seconds": "first scheduled to first token",
    "gptoss_request_decode_time_seconds": "first token to last token",
}
# Ingress-side (HTTP) series, labelled by route and status code instead of model and replica (and, like every front
# door series, by `frontdoor`: the ingress or gateway replica that counted it).
HTTP_COUNTERS = {"gptoss_http_requests_total": "HTTP requests by route and status code"}
HUB_COUNTERS = {"gptoss_replicas_lost_total": "LLM replicas that stopped reporting without shutting down (a crash, "
                                              "a killed pod or node); Serve starts a replacement"}
# The safety layer's series (cluster/safety.py), labelled by API key NAME (never the key): front doors count them.
KEY_COUNTERS = {
    "gptoss_key_requests_total": "requests by API key name, route (chat, completions, responses, tokenize) and status "
                                 "(HTTP status code; gRPC calls by the code the same error has over HTTP)",
    "gptoss_key_prompt_tokens_total": "prompt tokens charged to each API key",
    "gptoss_key_completion_tokens_total": "generated tokens charged to each API key (reasoning included)",
    "gptoss_key_reasoning_tokens_total": "generated reasoning tokens of each API key",
    "gptoss_key_refusals_total": "requests refused by API key and reason (scope, quota, content_filter, "
                                 "filter_unavailable, ledger_unavailable)",
}
SAFETY_COUNTERS = {
    "gptoss_guard_checks_total": "guard filter verdicts by filter, stage (input, output) and outcome (allow, redact, "
                                 "block, error: the filter failed or timed out and its on_error applied)",
    "gptoss_quota_ledger_errors_total": "quota ledger calls that failed or timed out, by the policy applied "
                                        "(open: admitted uncounted until settled, closed: refused)",
    "gptoss_audit_records_total": "audit records written",
    "gptoss_audit_errors_total": "audit records that could not be written",
    "gptoss_key_reload_errors_total": "key file changes that could not be loaded (the old keys stayed valid)",
}
# Pushed by the QuotaLedger deployment.
KEY_GAUGES = {"gptoss_key_quota_available": "fraction (0..1) of each API key's quota bucket a new request could "
                                            "use now, by key and quota (requests_per_min, tokens_per_min, ...)"}
ALL_METRICS = {**GAUGES, **COUNTERS, **HISTOGRAMS, **HTTP_COUNTERS, **HUB_COUNTERS, **KEY_COUNTERS, **SAFETY_COUNTERS,
               **KEY_GAUGES}

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
BUCKETS = {
    "gptoss_time_to_first_token_seconds": _TTFT_BUCKETS,
    "gptoss_inter_token_latency_seconds": _ITL_BUCKETS,
    **{name: _REQUEST_BUCKETS for name in ("gptoss_e2e_request_latency_seconds", "gptoss_request_queue_time_seconds",
                                           "gptoss_request_prefill_time_seconds",
                                           "gptoss_request_decode_time_seconds")},
}
# AsyncLLM.stats() field behind each engine-side series (gauges read live, counters cumulative in the engine)
ENGINE_GAUGES = {"gptoss_num_requests_running": "num_running", "gptoss_num_requests_waiting": "num_waiting",
                 "gptoss_kv_cache_usage_perc": "kv_cache_usage"}
ENGINE_COUNTERS = {"gptoss_prefix_cache_queries_total": "prefix_cache_queries",
                   "gptoss_prefix_cache_hits_total": "prefix_cache_hits",
                   "gptoss_num_preemptions_total": "num_preemptions"}


@dataclass
class Family:
    """A metric family as plain data (what replicas push to the hub)."""

    name: str  # family name as prometheus_client reports it (counters without `_total`)
    type: str  # "counter" | "gauge" | "histogram"
    help: str
    samples: list[tuple[str, dict, float]]  # (sample name, labels, value)


@dataclass
class RequestTimes:
    """One request's timestamps (time.monotonic()) as the replica saw them."""

    arrival: float
    scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


class ReplicaMetrics:
    """The series of one engine replica: request-level ones recorded here, engine ones read from `stats_fn`."""

    def __init__(self, model_name: str, replica: str, stats_fn):
        self.labels = {"model_name": model_name, "replica": replica}
        self.registry = CollectorRegistry(auto_describe=False)
        self._stats_fn = stats_fn
        self.registry.register(_EngineCollector(self.labels, stats_fn))
        self._prompt = Counter("gptoss_prompt_tokens", COUNTERS["gptoss_prompt_tokens_total"], LABELS,
                               registry=self.registry).labels(**self.labels)
        self._generation = Counter("gptoss_generation_tokens", COUNTERS["gptoss_generation_tokens_total"], LABELS,
                                   registry=self.registry).labels(**self.labels)
        self._success = Counter("gptoss_request_success", COUNTERS["gptoss_request_success_total"],
                                LABELS + ("finished_reason",), registry=self.registry)
        self._hist = {name: Histogram(name, text, LABELS, buckets=BUCKETS[name], registry=self.registry)
                      .labels(**self.labels) for name, text in HISTOGRAMS.items()}
        for reason in ("stop", "length", "abort"):  # exist at zero from the start, so rate() works at once
            self._success.labels(**self.labels, finished_reason=reason)

    def on_tokens(self, count: int, gap_s: float | None) -> None:
        """`count` new tokens arrived `gap_s` after the previous ones (None for the first)."""
        self._generation.inc(count)
        if gap_s is not None and count > 0:
            for _ in range(count):
                self._hist["gptoss_inter_token_latency_seconds"].observe(gap_s / count)

    def on_finished(self, prompt_tokens: int, finish_reason: str, times: RequestTimes) -> None:
        self._prompt.inc(prompt_tokens)
        self._success.labels(**self.labels, finished_reason=finish_reason or "abort").inc()
        end = times.finished or time.monotonic()
        self._observe("gptoss_e2e_request_latency_seconds", times.arrival, end)
        self._observe("gptoss_request_queue_time_seconds", times.arrival, times.scheduled)
        self._observe("gptoss_time_to_first_token_seconds", times.arrival, times.first_token)
        self._observe("gptoss_request_prefill_time_seconds", times.scheduled, times.first_token)
        self._observe("gptoss_request_decode_time_seconds", times.first_token, end)

    def _observe(self, name: str, start: float | None, end: float | None) -> None:
        if start is not None and end is not None:
            self._hist[name].observe(max(0.0, end - start))

    def snapshot(self) -> list[Family]:
        return snapshot(self.registry)


class _EngineCollector:
    """Engine gauges and cumulative counters, read from AsyncLLM.stats() at each collect."""

    def __init__(self, labels: dict, stats_fn):
        self.labels, self.stats_fn = labels, stats_fn

    def collect(self):
        stats = self.stats_fn()
        keys, values = list(self.labels), list(self.labels.values())
        for name, attr in ENGINE_GAUGES.items():
            family = GaugeMetricFamily(name, GAUGES[name], labels=keys)
            family.add_metric(values, float(getattr(stats, attr)))
            yield family
        for name, attr in ENGINE_COUNTERS.items():
            family = CounterMetricFamily(name, COUNTERS[name], labels=keys)
            family.add_metric(values, float(getattr(stats, attr)))
            yield family


class HttpMetrics:
    """The ingress's own series: requests by route and status (so 4xx/5xx rates can be alerted on)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter("gptoss_http_requests", HTTP_COUNTERS["gptoss_http_requests_total"],
                                 ("route", "status_code"), registry=self.registry)

    def on_response(self, route: str, status: int) -> None:
        self._requests.labels(route=route, status_code=str(status)).inc()

    def snapshot(self) -> list[Family]:
        return snapshot(self.registry)


class SafetyMetrics:
    """A front door's safety series: per-key requests, tokens and refusals; guard verdicts; and the counts its
    parts keep themselves (`stats()`: {"ledger_errors": {policy: n}, "audit_records", "audit_errors",
    "key_reload_errors"}), read at collect time."""

    def __init__(self, stats=dict):
        self.registry = CollectorRegistry(auto_describe=False)
        counter = {name.removesuffix("_total"): Counter(name.removesuffix("_total"), text, labels,
                                                        registry=self.registry)
                   for name, text, labels in (
                       ("gptoss_key_requests_total", KEY_COUNTERS["gptoss_key_requests_total"],
                        ("key", "route", "status")),
                       ("gptoss_key_prompt_tokens_total", KEY_COUNTERS["gptoss_key_prompt_tokens_total"], ("key",)),
                       ("gptoss_key_completion_tokens_total", KEY_COUNTERS["gptoss_key_completion_tokens_total"],
                        ("key",)),
                       ("gptoss_key_reasoning_tokens_total", KEY_COUNTERS["gptoss_key_reasoning_tokens_total"],
                        ("key",)),
                       ("gptoss_key_refusals_total", KEY_COUNTERS["gptoss_key_refusals_total"], ("key", "reason")),
                       ("gptoss_guard_checks_total", SAFETY_COUNTERS["gptoss_guard_checks_total"],
                        ("filter", "stage", "outcome")))}
        self._requests, self._prompt = counter["gptoss_key_requests"], counter["gptoss_key_prompt_tokens"]
        self._completion = counter["gptoss_key_completion_tokens"]
        self._reasoning = counter["gptoss_key_reasoning_tokens"]
        self._refusals, self._checks = counter["gptoss_key_refusals"], counter["gptoss_guard_checks"]
        self.registry.register(_SafetyCounts(stats))

    def on_request(self, key: str, route: str, status: int, usage=None) -> None:
        self._requests.labels(key=key, route=route, status=str(status)).inc()
        if usage is not None:
            self._prompt.labels(key=key).inc(usage.prompt_tokens)
            self._completion.labels(key=key).inc(usage.completion_tokens)
            self._reasoning.labels(key=key).inc(usage.reasoning_tokens)

    def on_refusal(self, key: str, reason: str) -> None:
        self._refusals.labels(key=key, reason=reason).inc()

    def on_check(self, filter_name: str, stage: str, outcome: str) -> None:
        self._checks.labels(filter=filter_name, stage=stage, outcome=outcome).inc()

    def snapshot(self) -> list[Family]:
        return snapshot(self.registry)


class _SafetyCounts:
    """Counts the safety layer's parts keep (ledger failures, audit writes, key reloads), as counters."""

    def __init__(self, stats):
        self.stats = stats

    def collect(self):
        stats = self.stats()
        ledger = CounterMetricFamily("gptoss_quota_ledger_errors", SAFETY_COUNTERS["gptoss_quota_ledger_errors_total"],
                                     labels=["policy"])
        for policy, count in sorted(stats.get("ledger_errors", {}).items()):
            ledger.add_metric([policy], float(count))
        yield ledger
        for name, field in (("gptoss_audit_records", "audit_records"), ("gptoss_audit_errors", "audit_errors"),
                            ("gptoss_key_reload_errors", "key_reload_errors")):
            yield CounterMetricFamily(name, SAFETY_COUNTERS[name + "_total"], value=float(stats.get(field, 0)))


def quota_families(levels: list[tuple[str, str, float]]) -> list[Family]:
    """The ledger's bucket levels (Ledger.levels()) as the gptoss_key_quota_available gauge."""
    samples = [("gptoss_key_quota_available", {"key": key, "quota": name}, value) for key, name, value in levels]
    return [Family("gptoss_key_quota_available", "gauge", KEY_GAUGES["gptoss_key_quota_available"], samples)]


def labelled(families: list[Family], **labels) -> list[Family]:
    """`families` with `labels` added to every sample (a front door's series carry `frontdoor`, so that two ingress
    replicas never push the same series)."""
    return [Family(f.name, f.type, f.help, [(name, {**sample, **labels}, value) for name, sample, value in f.samples])
            for f in families]


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """The registry's families as plain data (`_created` samples left out)."""
    return [Family(m.name, m.type, m.documentation,
                   [(s.name, dict(s.labels), s.value) for s in m.samples if not s.name.endswith("_created")])
            for m in registry.collect()]


def render(snapshots: list[list[Family]]) -> bytes:
    """One Prometheus text exposition from many sources' snapshots: each family's HELP/TYPE once, all samples."""
    merged: dict[str, Metric] = {}
    for families in snapshots:
        for fam in families:
            metric = merged.setdefault(fam.name, Metric(fam.name, fam.help, fam.type))
            for name, labels, value in fam.samples:
                metric.add_sample(name, labels, value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(list(merged.values())))
    return generate_latest(registry)


class _Static:
    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self):
        return self.metrics


class MetricsStore:
    """What the hub holds: the latest snapshot per source; a source silent for `ttl_s` is dropped (it is gone).

    Sources named MODEL/REPLICA are LLM replicas. One that goes silent without its final push (which a replica
    sends when Serve shuts it down) counts in gptoss_replicas_lost_total{model_name}, a series that exists at 0 from
    the model's first push so that Prometheus' increase() sees the first loss."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._latest: dict[str, tuple[float, list[Family]]] = {}
        self._final: set[str] = set()
        self._lost: dict[str, int] = {}  # model -> replicas lost

    def push(self, source: str, families: list[Family], final: bool = False) -> None:
        self._latest[source] = (time.monotonic(), families)
        model = _model_of(source)
        if model is not None:
            self._lost.setdefault(model, 0)
        if final:
            self._final.add(source)

    def render(self) -> bytes:
        now = time.monotonic()
        for source, (pushed, _) in list(self._latest.items()):
            if now - pushed > self.ttl_s:
                del self._latest[source]
                model = _model_of(source)
                if source in self._final:
                    self._final.discard(source)
                elif model is not None:
                    self._lost[model] += 1
        samples = [("gptoss_replicas_lost_total", {"model_name": m}, float(n)) for m, n in sorted(self._lost.items())]
        lost = Family("gptoss_replicas_lost", "counter", HUB_COUNTERS["gptoss_replicas_lost_total"], samples)
        return render([families for _, families in self._latest.values()] + [[lost]])


def _model_of(source: str) -> str | None:
    """The model of an LLM replica's source name (MODEL/REPLICA); None for the ingress's."""
    model, _, replica = source.partition("/")
    return model if replica and model != "ingress" else None
