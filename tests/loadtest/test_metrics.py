"""Metric formulas on hand-made event streams (exact), and the summary's throughput and goodput arithmetic."""

import math

import pytest

from loadtest.metrics import MetricSet, RequestRecord, Slo, StreamTally, summarize
from loadtest.target import Delta, Usage
from loadtest.tokenizer import WordTokenizer

COUNT = lambda text: len(WordTokenizer().encode(text))  # noqa: E731
T0 = 100.0     # perf_counter at the run's start


def tallied(events, scheduled=0.0, done=None, usage=None):
    rec = RequestRecord("r", scheduled=scheduled, sent=scheduled + 0.001)
    tally = StreamTally(rec, T0, COUNT)
    for t, channel, text in events:
        tally.add(Delta(T0 + t, channel, text))
    if usage:
        tally.add(usage)
    tally.finish(T0 + (done if done is not None else events[-1][0] + 0.005))
    return rec, tally


def test_reasoning_then_final_with_multi_token_chunks():
    # reasoning: 2 tokens at 0.100, 3 at 0.140; final: 1 at 0.180, 4 at 0.220; scheduled at 0.010
    rec, tally = tallied([(0.100, "reasoning", "a b "), (0.140, "reasoning", "c d e "),
                          (0.180, "final", "f "), (0.220, "final", "g h i j ")], scheduled=0.010, done=0.230)
    assert rec.ttft_ms == pytest.approx(90.0)
    assert rec.ttft_final_ms == pytest.approx(170.0)
    assert rec.e2e_ms == pytest.approx(220.0)
    assert (rec.output_tokens, rec.reasoning_tokens, rec.chunks) == (10, 5, 4)
    assert rec.tpot_ms == pytest.approx(120.0 / (10 - 2))
    assert tally.answer_text == "f g h i j "
    m = MetricSet()
    m.add(rec)
    assert m.hists["itl_chunk_ms"].count == 3 and m.hists["itl_chunk_ms"].mean == pytest.approx(40.0)
    # per token: 3 samples of 40/3, 1 of 40, 4 of 10; they add up to the decode time
    itl_tok = m.hists["itl_token_ms"]
    assert itl_tok.count == 8 and itl_tok.total == pytest.approx(120.0)
    assert itl_tok.min == pytest.approx(10.0) and itl_tok.max == pytest.approx(40.0)


def test_usage_overrides_counted_tokens():
    rec, _ = tallied([(0.1, "reasoning", "a "), (0.2, "final", "b ")], usage=Usage(77, 12, 5))
    assert (rec.input_tokens, rec.output_tokens, rec.reasoning_tokens) == (77, 12, 5)
    assert rec.tpot_ms == pytest.approx(100.0 / 11)


def test_deltas_at_one_instant_are_one_chunk():
    rec, _ = tallied([(0.1, "reasoning", "a b "), (0.1, "final", "c "), (0.2, "final", "d ")])
    assert rec.chunk_tokens == [3, 1] and rec.first_final == pytest.approx(0.1)


def test_single_chunk_has_no_tpot_and_passes_tpot_slo():
    rec, _ = tallied([(0.05, "final", "a b c ")])
    assert math.isnan(rec.tpot_ms)
    assert Slo(tpot_ms=1.0, ttft_ms=60).meets(rec)
    assert not Slo(ttft_ms=40).meets(rec)


def test_slo_checks_every_bound_and_fails_errors():
    rec, _ = tallied([(0.1, "reasoning", "a "), (0.3, "final", "b "), (0.35, "final", "c ")])
    assert Slo(ttft_ms=150).meets(rec) and not Slo(ttft_final_ms=150).meets(rec)
    assert not Slo(e2e_ms=300).meets(rec) and Slo(tpot_ms=130).meets(rec) and not Slo(tpot_ms=120).meets(rec)
    no_answer, _ = tallied([(0.1, "reasoning", "a ")])
    assert not Slo(ttft_final_ms=1e9).meets(no_answer)   # never answered: fails a final-TTFT SLO
    rec.status = "http_429"
    assert not Slo().meets(rec)


def test_summary_throughput_goodput_and_window():
    records = []
    for i in range(4):      # scheduled every 0.5 s, each done 0.25 s later, 10 output tokens, 2 of them reasoning
        rec = RequestRecord(f"r{i}", scheduled=0.5 * i, sent=0.5 * i, first_token=0.5 * i + 0.1 * (i + 1),
                            last_token=0.5 * i + 0.2, done=0.5 * i + 0.25, input_tokens=100, output_tokens=10,
                            reasoning_tokens=2)
        records.append(rec)
    records[3].status = "http_503"
    warm = RequestRecord("w", warmup=True, scheduled=-1.0, done=5.0)
    slo = Slo(ttft_ms=250, attainment=0.5)
    metrics = MetricSet()
    for r in records:
        r.good = slo.meets(r)
        metrics.add(r)
    s = summarize(metrics, records + [warm], slo)
    window = 1.75                        # last done (1.75) - first scheduled (0)
    assert s["window_s"] == pytest.approx(window)
    assert (s["requests"], s["completed"], s["failed"], s["errors"]) == (4, 3, 1, {"http_503": 1})
    assert s["request_throughput_rps"] == pytest.approx(3 / window)
    assert s["output_tok_s"] == pytest.approx(30 / window) and s["reasoning_tok_s"] == pytest.approx(6 / window)
    assert s["input_tok_s"] == pytest.approx(300 / window)
    assert s["goodput_rps"] == pytest.approx(2 / window)    # ttft 100, 200 ms meet 250; 300 ms and the 503 do not
    assert s["good_fraction"] == 0.5 and s["meets_slo"]
    assert s["ttft_ms"]["count"] == 3 and s["send_lag_ms"]["count"] == 4
