"""Live counters shared by the generator processes, and the one-line progress display on stderr.

Each process owns a slice of one flat array of doubles (a multiprocessing.Array across processes, a list in one):
sent, done, output tokens, then one count per error kind. The display sums the slices twice a second.
"""

from __future__ import annotations

import asyncio
import sys
import time

from loadtest.target import ERROR_KINDS

FIELDS = ("sent", "done", "tokens") + ERROR_KINDS


class Counters:
    def __init__(self, array, index: int) -> None:
        self.array, self.base = array, index * len(FIELDS)

    def add(self, name: str, n: float = 1) -> None:
        self.array[self.base + FIELDS.index(name)] += n


def totals(array, processes: int) -> dict[str, float]:
    return {name: sum(array[p * len(FIELDS) + i] for p in range(processes)) for i, name in enumerate(FIELDS)}


def status_line(elapsed: float, now: dict, before: dict, interval: float) -> str:
    errors = {k: int(now[k]) for k in ERROR_KINDS if now[k]}
    err = f"errors {sum(errors.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in errors.items())})"
                                               if errors else "")
    rps = (now["done"] - before["done"]) / interval
    tps = (now["tokens"] - before["tokens"]) / interval
    return (f"[{elapsed:6.1f}s] sent {int(now['sent'])} done {int(now['done'])} "
            f"in flight {int(now['sent'] - now['done'])} | {rps:.1f} req/s {tps:.0f} out tok/s | {err}")


async def show_progress(array, processes: int, label: str, stop: asyncio.Event, interval: float = 0.5) -> None:
    """Rewrites one stderr line (a new line every 10 s when stderr is not a terminal) until `stop` is set."""
    tty, start = sys.stderr.isatty(), time.monotonic()
    before, last_plain = totals(array, processes), 0.0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
        now, elapsed = totals(array, processes), time.monotonic() - start
        line = f"{label} {status_line(elapsed, now, before, interval)}"
        before = now
        if tty:
            sys.stderr.write("\r\033[K" + line)
        elif elapsed - last_plain >= 10 or stop.is_set():
            sys.stderr.write(line + "\n")
            last_plain = elapsed
        sys.stderr.flush()
    if tty:
        sys.stderr.write("\n")
