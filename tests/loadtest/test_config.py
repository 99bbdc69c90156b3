"""Configuration checks, the chunk parser of both APIs, and the progress line."""

import math

import pytest

from loadtest.config import LoadPoint, RunConfig
from loadtest.http_target import parse_chunk
from loadtest.progress import FIELDS, Counters, status_line, totals
from loadtest.prometheus import parse_metrics
from loadtest.target import Delta, Usage


def test_load_points_and_defaults():
    assert RunConfig("u", "m").points() == [LoadPoint("concurrency", 1.0)]
    assert RunConfig("u", "m").duration_s == 60.0
    assert math.isinf(RunConfig("u", "m", num_requests=5).duration_s)
    assert [p.value for p in RunConfig("u", "m", sweep_rates=[4, 1, 2]).points()] == [1.0, 2.0, 4.0]
    assert RunConfig("u", "m", rate=3).points() == [LoadPoint("rate", 3.0)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(rate=1, concurrency=2), "give one of"),
    (dict(concurrency=2, processes=4), "lower --processes"),
    (dict(rate=-1), "must be > 0"),
    (dict(arrival="uniform"), "--arrival"),
])
def test_bad_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig("u", "m", **kwargs)


def test_config_record_hides_the_api_key():
    d = RunConfig("u", "m", api_key="k").to_dict()
    assert "api_key" not in d and d["api_key_set"] is True


def test_parse_chunk_chat_completions_and_usage():
    events = parse_chunk({"choices": [{"delta": {"reasoning_content": "think", "content": "say"}}]}, 1.0)
    assert events == [Delta(1.0, "reasoning", "think"), Delta(1.0, "final", "say")]
    assert parse_chunk({"choices": [{"delta": {"reasoning": "r"}}]}, 2.0) == [Delta(2.0, "reasoning", "r")]
    assert parse_chunk({"choices": [{"text": "t"}]}, 3.0) == [Delta(3.0, "final", "t")]
    assert parse_chunk({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, 4.0) == []
    usage = {"prompt_tokens": 3, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}}
    assert parse_chunk({"choices": [], "usage": usage}, 5.0) == [Usage(3, 9, 4)]
    assert parse_chunk({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}, 5.0) == \
        [Usage(1, 2, None)]


def test_prometheus_parse_sums_label_sets():
    text = ('# HELP x\ngptoss_num_requests_waiting{engine="0"} 3\ngptoss_num_requests_waiting{engine="1"} 4 17000\n'
            'gptoss_kv_cache_usage_perc 0.25\nother 1\n')
    names = {"queue_depth": "gptoss_num_requests_waiting", "kv_cache_usage": "gptoss_kv_cache_usage_perc"}
    assert parse_metrics(text, names) == {"queue_depth": 7.0, "kv_cache_usage": 0.25}


def test_counters_and_status_line():
    array = [0.0] * (2 * len(FIELDS))
    Counters(array, 0).add("sent", 3)
    Counters(array, 1).add("sent", 2)
    Counters(array, 1).add("done", 2)
    Counters(array, 1).add("http_429")
    now = totals(array, 2)
    assert (now["sent"], now["done"], now["http_429"]) == (5, 2, 1)
    line = status_line(1.0, now, dict.fromkeys(FIELDS, 0.0), 0.5)
    assert "sent 5 done 2 in flight 3" in line and "4.0 req/s" in line and "errors 1 (http_429 1)" in line


def test_every_formula_is_documented_in_the_readme():
    from pathlib import Path

    from loadtest.metrics import FORMULAS

    readme = (Path(__file__).parents[2] / "loadtest" / "README.md").read_text()
    for key in FORMULAS:
        for name in key.split(", "):
            assert name == "clock" or name in readme, name
