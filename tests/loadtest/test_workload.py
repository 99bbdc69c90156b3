"""Workloads (exact token lengths, shared prefixes, multi-turn, JSONL) and arrival processes."""

import json
import random
import statistics

import pytest

from loadtest.arrivals import arrival_times, ramp_inverse, worker_starts
from loadtest.workload import Distribution, Workload, WorkloadSpec, text_of_length
from loadtest.tokenizer import WordTokenizer


class CharTokenizer:
    """One token per character: re-encoding a truncated text is exact, unlike words."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("tok", [WordTokenizer(), CharTokenizer()], ids=["words", "chars"])
@pytest.mark.parametrize("n", [1, 7, 300])
def test_text_of_exact_length(tok, n):
    assert len(tok.encode(text_of_length(tok, n, random.Random(n)))) == n


def test_distributions():
    rng = random.Random(0)
    assert Distribution.parse("64").sample(rng) == 64
    assert {Distribution.parse("uniform:3:5").sample(rng) for _ in range(200)} == {3, 4, 5}
    normal = [Distribution.parse("normal:100:10").sample(rng) for _ in range(2000)]
    assert statistics.mean(normal) == pytest.approx(100, abs=1.5)
    logn = [Distribution.parse("lognormal:200:0.5").sample(rng) for _ in range(2000)]
    assert statistics.median(logn) == pytest.approx(200, rel=0.06)
    assert min(Distribution.parse("normal:1:50").sample(rng) for _ in range(100)) >= 1
    for bad in ("x", "uniform:1", "zipf:1:2"):
        with pytest.raises(ValueError, match="bad length distribution"):
            Distribution.parse(bad)


def test_synthetic_sessions_lengths_prefixes_turns():
    spec = WorkloadSpec(input_len="12", output_len="uniform:5:9", prefix_groups=3, prefix_len=20, turns=2)
    tok = WordTokenizer()
    w = Workload(spec, tok)
    sessions = [w.next_session(str(i)) for i in range(6)]
    assert [s.group for s in sessions] == [0, 1, 2, 0, 1, 2]
    for s in sessions:
        assert len(s.turns) == 2
        assert s.turns[0].input_tokens == 32 and s.turns[1].input_tokens == 12
        assert all(5 <= t.max_tokens <= 9 for t in s.turns)
    prefix = lambda s: s.turns[0].text.split()[:20]  # noqa: E731
    assert prefix(sessions[0]) == prefix(sessions[3]) != prefix(sessions[1])
    assert sessions[0].turns[0].text != sessions[3].turns[0].text
    # another generator process: same prefixes, different suffixes
    other = Workload(spec, tok, seed_offset=1).next_session("x")
    assert prefix(other) == prefix(sessions[0]) and other.turns[0].text != sessions[0].turns[0].text


def test_prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "the of and", "max_tokens": 5}, {"messages": [{"role": "system", "content": "be brief"},
             {"role": "user", "content": "hello there"}]}, {"turns": ["one two", "three"]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    w = Workload(WorkloadSpec(output_len="7", prompts_file=str(path)), WordTokenizer())
    a, b, c, again = (w.next_session(str(i)) for i in range(4))
    assert (a.turns[0].text, a.turns[0].max_tokens, a.turns[0].input_tokens) == ("the of and", 5, 3)
    assert b.turns[0].messages[1]["content"] == "hello there" and b.turns[0].input_tokens == 4
    assert [t.text for t in c.turns] == ["one two", "three"] and c.turns[0].max_tokens == 7
    assert again.turns[0].text == "the of and"      # the file is cycled
    path.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match=":1: each line needs"):
        Workload(WorkloadSpec(prompts_file=str(path)), WordTokenizer())


def test_spec_validation():
    with pytest.raises(ValueError, match="prefix"):
        WorkloadSpec(prefix_groups=2)
    with pytest.raises(ValueError, match="turns"):
        WorkloadSpec(turns=0)


def test_poisson_and_gamma_rates_and_burstiness():
    for arrival, b, cv2 in (("poisson", 1.0, 1.0), ("gamma", 0.25, 4.0), ("gamma", 4.0, 0.25)):
        times = take(arrival_times(50.0, arrival, b, seed=3), 20_000)
        gaps = [y - x for x, y in zip(times, times[1:])]
        assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.05)
        assert statistics.variance(gaps) / statistics.mean(gaps) ** 2 == pytest.approx(cv2, rel=0.15)
    assert take(arrival_times(4.0, "constant"), 3) == [0.0, 0.25, 0.5]
    assert take(arrival_times(4.0, "constant", phase=0.5), 2) == [0.125, 0.375]


def test_ramp_up_rises_linearly():
    times = take(arrival_times(100.0, "constant", ramp_up=2.0), 400)
    in_ramp = sum(t < 2.0 for t in times)
    assert in_ramp == pytest.approx(100, abs=1)           # half the rate on average over the ramp
    assert sum(t < 1.0 for t in times) == pytest.approx(25, abs=1)   # rate * t^2 / (2R)
    assert ramp_inverse(1.0, 2.0) == pytest.approx(2.0) and ramp_inverse(3.0, 2.0) == 4.0
    assert worker_starts(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    with pytest.raises(ValueError):
        next(arrival_times(0.0))
