"""SamplingParams validation: every bad value raises a ValueError naming the field and what it allows."""

import math
import re

import pytest

from engine.sampling_params import MAX_LOGPROBS, MAX_N, SamplingParams

# (constructor kwargs, the message's expected start: field name + allowed range)
BAD_VALUES = [
    ({"n": 0}, "n must be in [1, 16]"),
    ({"n": MAX_N + 1}, "n must be in [1, 16]"),
    ({"n": 1.5}, "n must be an int"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": -1}, "temperature must be >= 0"),
    ({"temperature": math.inf}, "temperature must be >= 0"),
    ({"temperature": math.nan}, "temperature must be a real number"),
    ({"temperature": "hot"}, "temperature must be a real number"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": -0.2}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_k": -2}, "top_k must be >= 1, or 0 / -1 for off"),
    ({"top_k": -100}, "top_k must be >= 1, or 0 / -1 for off"),
    ({"min_p": -0.01}, "min_p must be in [0, 1]"),
    ({"min_p": 1.01}, "min_p must be in [0, 1]"),
    ({"presence_penalty": 2.01}, "presence_penalty must be in [-2, 2]"),
    ({"presence_penalty": -3}, "presence_penalty must be in [-2, 2]"),
    ({"frequency_penalty": 2.5}, "frequency_penalty must be in [-2, 2]"),
    ({"frequency_penalty": -2.01}, "frequency_penalty must be in [-2, 2]"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"repetition_penalty": -1.0}, "repetition_penalty must be > 0"),
    ({"repetition_penalty": math.inf}, "repetition_penalty must be > 0"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"max_tokens": -5}, "max_tokens must be >= 1"),
    ({"min_tokens": -1}, "min_tokens must be in [0, max_tokens=16]"),
    ({"min_tokens": 17}, "min_tokens must be in [0, max_tokens=16]"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens must be in [0, max_tokens=4]"),
    ({"logprobs": -1}, "logprobs must be in [0, 20]"),
    ({"logprobs": MAX_LOGPROBS + 1}, "logprobs must be in [0, 20]"),
    ({"logit_bias": {5: 100.5}}, "logit_bias[5] must be in [-100, 100]"),
    ({"logit_bias": {5: -101}}, "logit_bias[5] must be in [-100, 100]"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias token ids must be an int"),
    ({"stop": [""]}, "stop must be a non-empty string"),
    ({"stop": ["ok", 3]}, "stop must be a non-empty string"),
    ({"stop_token_ids": [1.5]}, "stop_token_ids must be an int"),
    ({"seed": "7"}, "seed must be an int"),
]


@pytest.mark.parametrize("kwargs, message", BAD_VALUES, ids=[repr(kw) for kw, _ in BAD_VALUES])
def test_bad_value_names_field_and_range(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)) as err:
        SamplingParams(**kwargs)
    assert "got" in str(err.value)


GOOD_VALUES = [
    {"n": MAX_N}, {"temperature": 0}, {"temperature": 7.5}, {"top_p": 1.0}, {"top_p": 1e-6}, {"top_k": -1},
    {"top_k": 0}, {"top_k": 10**9}, {"min_p": 0.0}, {"min_p": 1.0}, {"presence_penalty": -2}, {"frequency_penalty": 2},
    {"repetition_penalty": 1e-3}, {"logprobs": 0}, {"logprobs": MAX_LOGPROBS}, {"min_tokens": 16},
    {"logit_bias": {0: -100, 9: 100}}, {"seed": 0}, {"priority": -3},
]


@pytest.mark.parametrize("kwargs", GOOD_VALUES, ids=repr)
def test_boundary_values_are_accepted(kwargs):
    SamplingParams(**kwargs)


def test_stop_is_normalized_to_a_list():
    assert SamplingParams().stop == []
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
    assert SamplingParams(stop=["a", "b"]).stop == ["a", "b"]


def test_is_greedy():
    assert SamplingParams(temperature=0).is_greedy
    assert not SamplingParams(temperature=0.7).is_greedy
    assert not SamplingParams().is_greedy


MODEL_BAD = [
    ({"logit_bias": {100: 1.0}}, "logit_bias token ids must be in [0, 100)"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias token ids must be in [0, 100)"),
    ({"stop_token_ids": [100]}, "stop_token_ids token ids must be in [0, 100)"),
    ({"stop_token_ids": [3, -2]}, "stop_token_ids token ids must be in [0, 100)"),
    ({"max_tokens": 25}, "max_tokens must be <= 24 (max_model_len 64 - prompt of 40 tokens)"),
]


@pytest.mark.parametrize("kwargs, message", MODEL_BAD, ids=[repr(kw) for kw, _ in MODEL_BAD])
def test_validate_for_model_rejects(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        SamplingParams(**kwargs).validate_for_model(vocab_size=100, max_model_len=64, prompt_len=40)


def test_validate_for_model_accepts_edges():
    SamplingParams(max_tokens=24, logit_bias={0: 1, 99: 1}, stop_token_ids=[99]).validate_for_model(100, 64, 40)
