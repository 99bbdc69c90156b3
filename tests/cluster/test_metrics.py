"""Metrics: every name from cluster.metrics appears in the exposition, labelled, merged across replicas."""

import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from cluster.metrics import COUNTERS, GAUGES, HISTOGRAMS, MetricsStore, ReplicaMetrics, RequestTimes


@dataclass
class Stats:
    num_running: int = 1
    num_waiting: int = 2
    kv_cache_usage: float = 0.25
    prefix_cache_queries: int = 100
    prefix_cache_hits: int = 40
    num_preemptions: int = 3


def parse(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_two_replicas_render_as_one_exposition():
    store = MetricsStore(ttl_s=60)
    for replica in ("a", "b"):
        m = ReplicaMetrics("tiny", replica, Stats)
        m.on_tokens(1, None)
        m.on_tokens(4, 0.2)  # 4 tokens 0.2 s after the first: 4 gaps of 0.05 s
        m.on_finished(10, "length", RequestTimes(arrival=0.0, scheduled=0.5, first_token=1.0, finished=3.0))
        store.push(f"tiny/{replica}", m.snapshot())
    samples = parse(store.render())
    names = {name for name, _ in samples}
    assert set(GAUGES) | set(COUNTERS) <= names
    for name in HISTOGRAMS:
        assert {name + "_bucket", name + "_sum", name + "_count"} <= names
    key = (("model_name", "tiny"), ("replica", "a"))
    assert samples[("gptoss_kv_cache_usage_perc", key)] == 0.25
    assert samples[("gptoss_prefix_cache_hits_total", key)] == 40
    assert samples[("gptoss_generation_tokens_total", key)] == 5
    assert samples[("gptoss_prompt_tokens_total", key)] == 10
    assert samples[("gptoss_request_success_total", (("finished_reason", "length"),) + key)] == 1
    assert samples[("gptoss_request_success_total", (("finished_reason", "abort"),) + key)] == 0
    assert samples[("gptoss_inter_token_latency_seconds_count", key)] == 4
    assert samples[("gptoss_time_to_first_token_seconds_sum", key)] == 1.0
    assert samples[("gptoss_request_queue_time_seconds_sum", key)] == 0.5
    assert samples[("gptoss_request_decode_time_seconds_sum", key)] == 2.0
    assert ("gptoss_num_requests_running", (("model_name", "tiny"), ("replica", "b"))) in samples


def test_silent_sources_expire():
    store = MetricsStore(ttl_s=0)
    store.push("x", ReplicaMetrics("tiny", "x", Stats).snapshot())
    assert b"gptoss_num_requests" not in store.render()


def test_a_replica_that_goes_silent_without_its_final_push_counts_as_lost():
    store = MetricsStore(ttl_s=0.05)
    store.push("tiny/crashed", ReplicaMetrics("tiny", "crashed", Stats).snapshot())
    store.push("tiny/drained", ReplicaMetrics("tiny", "drained", Stats).snapshot())
    store.push("tiny/drained", ReplicaMetrics("tiny", "drained", Stats).snapshot(), final=True)  # Serve stopped it
    store.push("ingress/1", [])
    lost = ("gptoss_replicas_lost_total", (("model_name", "tiny"),))
    assert parse(store.render())[lost] == 0  # the series exists from the first push, so increase() sees a loss
    time.sleep(0.1)
    samples = parse(store.render())
    assert samples[lost] == 1 and not any(name == "gptoss_num_requests_running" for name, _ in samples)
    store.push("tiny/new", ReplicaMetrics("tiny", "new", Stats).snapshot())
    assert parse(store.render())[lost] == 1  # counted once; the replacement reports as usual
