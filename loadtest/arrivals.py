"""When requests are scheduled: open-loop arrival times (Poisson, gamma, constant) with an optional linear ramp-up,
and the start offsets of closed-loop workers.

Arrivals are drawn in 'operational time' u, where gaps have mean 1 (exponential for Poisson; gamma with shape B and
scale 1/B, so burstiness B < 1 is burstier than Poisson and B > 1 smoother; constant gaps of 1), then mapped to real
time through the inverse of the expected arrival count Lambda(t) = rate * g(t). Without ramp-up g(t) = t; with a
ramp of R seconds the rate rises linearly from 0 to `rate`: g(t) = t^2 / (2R) for t < R and R/2 + (t - R) after.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

ARRIVALS = ("poisson", "gamma", "constant")


def unit_gaps(arrival: str, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Endless gaps with mean 1 in operational time."""
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival process {arrival!r}; use one of {', '.join(ARRIVALS)}")
    if arrival == "gamma" and burstiness <= 0:
        raise ValueError(f"--burstiness must be > 0 for gamma arrivals, got {burstiness}")
    while True:
        if arrival == "poisson":
            yield rng.expovariate(1.0)
        elif arrival == "gamma":
            yield rng.gammavariate(burstiness, 1.0 / burstiness)
        else:
            yield 1.0


def ramp_inverse(y: float, ramp_up: float) -> float:
    """g^-1(y): the real time by which `y` requests-per-unit-rate are expected (see the module docstring)."""
    if ramp_up <= 0:
        return y
    if y < ramp_up / 2:
        return math.sqrt(2 * ramp_up * y)
    return y + ramp_up / 2


def arrival_times(rate: float, arrival: str = "poisson", burstiness: float = 1.0, ramp_up: float = 0.0,
                  seed: int = 0, phase: float = 0.0) -> Iterator[float]:
    """Scheduled send times in seconds from the run's start, ascending and endless. The first falls at
    operational time `phase` (0 for one generator; generator i of P uses i/P so constant arrivals interleave)."""
    if rate <= 0:
        raise ValueError(f"--rate must be > 0 requests/s, got {rate}")
    rng = random.Random(seed)
    u = phase
    gaps = unit_gaps(arrival, burstiness, rng)
    while True:
        yield ramp_inverse(u / rate, ramp_up)
        u += next(gaps)


def worker_starts(concurrency: int, ramp_up: float) -> list[float]:
    """Closed loop: worker j of N starts at j * R / N, so the concurrency reaches N linearly over the ramp."""
    return [j * ramp_up / concurrency for j in range(concurrency)]
