"""Several generator processes: they share one start time and schedule, and their histograms merge exactly."""

from loadtest import runner
from loadtest.histogram import PERCENTILES, Histogram

from .conftest import make_config, reply


def test_two_processes_merge_exactly(fake_server):
    server = fake_server(lambda i, body: reply((0.02, 1, "reasoning"), (0.01, 2, "final")))
    cfg = make_config(server.url, rate=40.0, arrival="constant", duration_s=1.0, warmup_s=0.2, processes=2)
    point = runner.run(cfg).points[0]
    measured = [r for r in point.records if not r.warmup]
    assert {r.worker for r in measured} == {0, 1}
    assert len(measured) == 40 and all(r.status == "ok" for r in measured)
    # constant arrivals interleave: together the two processes keep one 25 ms grid
    scheduled = sorted(r.scheduled for r in point.records)
    assert all(abs(b - a - 0.025) < 1e-6 for a, b in zip(scheduled, scheduled[1:]))
    for name in ("ttft_ms", "ttft_final_ms", "e2e_ms", "send_lag_ms"):
        whole = Histogram()
        for r in measured:
            whole.record(max(0.0, getattr(r, name)) if name == "send_lag_ms" else getattr(r, name))
        merged = point.metrics.hists[name]
        assert merged.buckets == whole.buckets and merged.count == whole.count == 40
        assert [merged.percentile(q) for q in PERCENTILES] == [whole.percentile(q) for q in PERCENTILES]
    assert point.summary["itl_chunk_ms"]["count"] == 40
    assert point.summary["request_throughput_rps"] > 20  # 40 in about 1 s (longer on a slow VM: the last end late)


def test_num_requests_is_split_between_processes(fake_server):
    server = fake_server(lambda i, body: reply((0.01, 1, "final")))
    point = runner.run(make_config(server.url, concurrency=3, num_requests=7, processes=2)).points[0]
    assert len(point.records) == 7
    assert sorted(sum(r.worker == w for r in point.records) for w in (0, 1)) == [3, 4]
