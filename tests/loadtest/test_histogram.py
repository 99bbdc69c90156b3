"""Histogram: percentiles within the bucket precision of exact nearest-rank ones; merge is exact."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.histogram import PERCENTILES, Histogram


def exact_percentile(values, q):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def test_percentiles_within_precision_of_exact():
    rng = random.Random(1)
    values = [rng.lognormvariate(3, 1.2) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    for q in PERCENTILES:
        assert h.percentile(q) == pytest.approx(exact_percentile(values, q), rel=h.rel)
    assert (h.count, h.min, h.max) == (len(values), min(values), max(values))
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_small_and_zero_values_and_empty():
    h = Histogram()
    assert math.isnan(h.percentile(50)) and math.isnan(h.summary()["min"])
    for v in (0.0, 0.0, 5.0, float("nan")):
        h.record(v)
    assert h.count == 3 and h.percentile(50) == 0.0 and h.percentile(100) == 5.0


def test_weighted_record_equals_repeated_records():
    a, b = Histogram(), Histogram()
    a.record(12.5, 4)
    for _ in range(4):
        b.record(12.5)
    assert a.to_dict() == b.to_dict()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=50), min_size=1, max_size=6))
def test_merge_equals_one_histogram_fed_everything(parts):
    merged, whole = Histogram(), Histogram()
    for part in parts:
        h = Histogram()
        for v in part:
            h.record(v)
            whole.record(v)
        merged.merge(Histogram.from_dict(h.to_dict()))     # through the wire format, as between processes
    assert merged.buckets == whole.buckets and merged.zero == whole.zero and merged.count == whole.count
    for q in PERCENTILES:
        assert merged.percentile(q) == whole.percentile(q) or math.isnan(whole.percentile(q))
    assert merged.total == pytest.approx(whole.total)


def test_merge_refuses_different_buckets():
    with pytest.raises(ValueError, match="same rel"):
        Histogram(rel=0.01).merge(Histogram(rel=0.02))


def test_cdf_ends_at_one():
    h = Histogram()
    for v in range(1, 101):
        h.record(float(v))
    cdf = h.cdf()
    assert cdf[-1][1] == 1.0 and all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(cdf, cdf[1:]))
