"""Scrapes the server's Prometheus endpoint during a run so queue depth and KV-cache usage share the run's timeline.

Each configured metric is summed over its label sets (e.g. several engines) per scrape; samples are
(seconds from the run's start, {label: value}). A failed scrape is skipped and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import math
import time

import httpx


def parse_metrics(text: str, names: dict[str, str]) -> dict[str, float]:
    """{label: sum of the samples of metric `names[label]`} from Prometheus text exposition format."""
    wanted = {metric: label for label, metric in names.items()}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric in wanted:
            rest = line.rsplit("}", 1)[1] if "}" in line else line.split(None, 1)[-1]
            try:
                value = float(rest.split()[0])   # a timestamp may follow the value
            except (ValueError, IndexError):
                continue
            if not math.isnan(value):
                out[wanted[metric]] = out.get(wanted[metric], 0.0) + value
    return out


class Scraper:
    def __init__(self, url: str, names: dict[str, str], interval_s: float) -> None:
        self.url, self.names, self.interval_s = url, names, interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.failures = 0
        self.client = httpx.AsyncClient(timeout=max(1.0, interval_s), trust_env=False)   # built before the start

    async def run(self, t0: float, stop: asyncio.Event) -> None:
        """Scrapes every interval until `stop`; t0 is the run's start in time.perf_counter() terms."""
        async with self.client as client:
            while not stop.is_set():
                try:
                    resp = await client.get(self.url)
                    resp.raise_for_status()
                    self.samples.append((time.perf_counter() - t0, parse_metrics(resp.text, self.names)))
                except httpx.HTTPError:
                    self.failures += 1
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass
