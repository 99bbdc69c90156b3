"""Log-bucketed latency histograms that merge exactly.

A value v > `lowest` falls in bucket i = floor(log(v / lowest) / log(1 + rel)), so every bucket is `rel` (1%) wide
relative to its lower edge; values <= `lowest` go to the zero bucket. Counts are integers and the bucket of a value
depends only on the value, so merging two histograms (adding counts) gives exactly the histogram of all their values
and every percentile of the merge equals that of one histogram fed everything (the HdrHistogram property, with plain
log buckets instead of HDR's sub-bucket layout). min, max, count and sum are kept exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


@dataclass
class Histogram:
    rel: float = 0.01       # relative bucket width: reported percentiles are within rel/2 of a recorded value
    lowest: float = 1e-3    # values at or below this (in the histogram's unit) share the zero bucket
    count: int = 0
    total: float = 0.0      # exact sum, for the mean
    min: float = math.inf
    max: float = -math.inf
    zero: int = 0           # values <= lowest
    buckets: dict[int, int] = field(default_factory=dict)   # bucket index -> count

    def record(self, value: float, n: int = 1) -> None:
        """Adds `n` copies of `value`; NaN is ignored (an undefined metric for that request)."""
        if value != value:
            return
        self.count += n
        self.total += value * n
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if value <= self.lowest:
            self.zero += n
            return
        i = self._index(value)
        self.buckets[i] = self.buckets.get(i, 0) + n

    def merge(self, other: Histogram) -> Histogram:
        """Adds `other`'s counts into this one (in place) and returns self."""
        if (other.rel, other.lowest) != (self.rel, self.lowest):
            raise ValueError(f"cannot merge histograms with different buckets: {other.rel, other.lowest} vs "
                             f"{self.rel, self.lowest}; build both with the same rel and lowest")
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.zero += other.zero
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        return self

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile q in [0, 100]: the bucket holding the ceil(q/100 * count)-th smallest value,
        reported at its geometric middle clamped to [min, max]; the largest rank is max itself. NaN when empty."""
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.count))
        if rank >= self.count:
            return self.max
        seen = self.zero
        if seen >= rank:
            return self.min
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                return min(max(self._middle(i), self.min), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def summary(self) -> dict[str, float]:
        """count, mean, min, max and the standard percentiles, keyed p50 ... p99.9."""
        out = {"count": self.count, "mean": self.mean, "min": self._finite(self.min), "max": self._finite(self.max)}
        for q in PERCENTILES:
            out[f"p{q:g}"] = self.percentile(q)
        return out

    def cdf(self) -> list[tuple[float, float]]:
        """(upper edge of bucket, fraction of values at or below it), ascending; for plots."""
        points, seen = [], self.zero
        if self.zero:
            points.append((self.lowest, seen / self.count))
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            points.append((self.lowest * (1 + self.rel) ** (i + 1), seen / self.count))
        return points

    def to_dict(self) -> dict:
        return {"rel": self.rel, "lowest": self.lowest, "count": self.count, "sum": self.total,
                "min": self._finite(self.min), "max": self._finite(self.max), "zero": self.zero,
                "buckets": {str(i): n for i, n in sorted(self.buckets.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> Histogram:
        nan_to = lambda v, inf: inf if v is None or v != v else v  # noqa: E731
        return cls(rel=d["rel"], lowest=d["lowest"], count=d["count"], total=d["sum"],
                   min=nan_to(d["min"], math.inf), max=nan_to(d["max"], -math.inf), zero=d["zero"],
                   buckets={int(i): n for i, n in d["buckets"].items()})

    def _index(self, value: float) -> int:
        return math.floor(math.log(value / self.lowest) / math.log1p(self.rel))

    def _middle(self, i: int) -> float:
        return self.lowest * (1 + self.rel) ** (i + 0.5)

    @staticmethod
    def _finite(v: float) -> float:
        return v if math.isfinite(v) else math.nan
