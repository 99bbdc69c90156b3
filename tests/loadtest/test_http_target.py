"""End to end through real HTTP/SSE against the scripted fake server: latencies match the scripted delays within
a timing tolerance; token counts, throughput and goodput follow the formulas."""

import statistics

import pytest

from loadtest import runner
from loadtest.metrics import Slo

from .conftest import make_config, reply

TOL_MS = 30.0     # scheduling noise on a shared 2-core machine, for medians over a run's requests
FLOOR_MS = 5.0    # a measured time may exceed the script by a VM stall, but never fall short of it by more
SLOW_MS = 100.0   # fixed per-request client and server cost on a slow, shared VM (seen: +40 ms)

# reasoning 2 tokens at 100 ms, reasoning 3 at +40, final 1 at +40, final 4 at +40
REASONING_THEN_FINAL = [(0.100, 2, "reasoning"), (0.040, 3, "reasoning"), (0.040, 1, "final"), (0.040, 4, "final")]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_latencies_tokens_and_throughput(fake_server, api):
    server = fake_server(lambda i, body: reply(*REASONING_THEN_FINAL))
    result = runner.run(make_config(server.url, api=api, concurrency=2, num_requests=6))
    point = result.points[0]
    s, recs = point.summary, point.records
    assert (s["requests"], s["completed"]) == (6, 6)
    for r in recs:  # each request: no time shorter than its script, exact token counts
        assert r.ttft_ms >= 100 - FLOOR_MS and r.e2e_ms - r.ttft_ms >= 120 - FLOOR_MS
        assert (r.output_tokens, r.chunks) == (10, 4)
        if api == "chat":    # the completions API has no reasoning channel: everything is final
            assert r.reasoning_tokens == 5 and r.ttft_final_ms - r.ttft_ms >= 80 - FLOOR_MS
    # the run: the scripted gaps between a request's own events (fixed client costs cancel out), and absolute
    # times no shorter than the script and within a slow VM's overhead of it
    assert statistics.median(r.e2e_ms - r.ttft_ms for r in recs) == pytest.approx(120, abs=TOL_MS)
    assert statistics.median(r.tpot_ms for r in recs) == pytest.approx(120 / 8, abs=TOL_MS / 8)
    if api == "chat":
        assert statistics.median(r.ttft_final_ms - r.ttft_ms for r in recs) == pytest.approx(80, abs=TOL_MS)
    assert 100 - FLOOR_MS <= statistics.median(r.ttft_ms for r in recs) <= 100 + SLOW_MS
    assert 220 - FLOOR_MS <= statistics.median(r.e2e_ms for r in recs) <= 220 + SLOW_MS
    assert s["itl_chunk_ms"]["count"] == 18 and s["itl_chunk_ms"]["p50"] == pytest.approx(40, abs=TOL_MS / 2)
    assert s["itl_token_ms"]["count"] == 6 * 8
    # two at a time, three rounds of ~220 ms
    assert 0.66 - 3 * FLOOR_MS / 1e3 <= s["window_s"] <= 0.66 + 3 * SLOW_MS / 1e3
    assert s["request_throughput_rps"] == pytest.approx(6 / s["window_s"])
    assert s["output_tok_s"] == pytest.approx(60 / s["window_s"])
    if api == "chat":
        assert s["reasoning_tok_s"] == pytest.approx(30 / s["window_s"])


def test_goodput_counts_requests_meeting_slos(fake_server):
    # even requests answer after 20 ms, odd ones after 600 ms; the SLO at 300 ms splits them in half (with room for
    # a slow machine on both sides)
    server = fake_server(lambda i, body: reply((0.02 if i % 2 == 0 else 0.6, 1, "final"), (0.01, 1, "final")))
    cfg = make_config(server.url, concurrency=1, num_requests=6, slo=Slo(ttft_ms=300, attainment=0.6))
    s = runner.run(cfg).points[0].summary
    assert s["good_fraction"] == 0.5 and not s["meets_slo"]
    assert s["goodput_rps"] == pytest.approx(3 / s["window_s"])
    assert 3 * 0.03 + 3 * 0.61 <= s["window_s"] <= 3 * 0.03 + 3 * 0.61 + 6 * SLOW_MS / 1e3


def test_multi_turn_sends_previous_answers_and_prefix_groups_share_prefix(fake_server):
    bodies = []

    def script(i, body):
        bodies.append(body)
        return reply((0.01, 3, "reasoning"), (0.01, 2, "final"))

    from loadtest.workload import WorkloadSpec

    spec = WorkloadSpec(input_len="5", output_len="4", turns=2, prefix_groups=2, prefix_len=6)
    result = runner.run(make_config(fake_server(script).url, concurrency=1, num_requests=4, workload=spec))
    assert [r.turn for r in result.points[0].records] == [0, 1, 0, 1]
    second = bodies[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == "the of "          # the final-channel answer of turn 1, not the reasoning
    assert bodies[0]["max_tokens"] == 4
    first_words = [b["messages"][0]["content"].split() for b in (bodies[0], bodies[2])]
    assert len(first_words[0]) == 6 + 5 and first_words[0][:6] != first_words[1][:6]   # two groups
    # usage comes from the server: it counts the whole conversation of turn 2
    assert result.points[0].records[1].input_tokens == len(" ".join(m["content"] for m in second).split())


def test_prometheus_samples_on_the_timeline(fake_server):
    server = fake_server(lambda i, body: reply((0.3, 1, "final")))
    cfg = make_config(server.url, concurrency=3, num_requests=6, metrics_url=server.url + "/metrics",
                      scrape_interval_s=0.1)
    timeline = runner.run(cfg).points[0].timeline
    assert len(timeline) >= 4
    assert max(v.get("queue_depth", 0) for _, v in timeline) >= 2
    assert max(v.get("kv_cache_usage", 0) for _, v in timeline) >= 0.02
