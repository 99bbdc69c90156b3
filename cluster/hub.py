"""The hub: one small deployment every LLM replica and front door reports to, and the cluster's control state.

Flow: each source (an LLM replica `MODEL/REPLICA`, an HTTP ingress `ingress/ID`, a gRPC gateway `gateway/ID`) runs a
`MetricsPusher` that pushes a plain-data metrics snapshot every `metrics_push_interval_s`, front doors adding how
many requests they have in flight -> `MetricsHub.push` keeps the latest per source and answers with the control
state (`draining`) -> `GET /metrics` on the ingress renders every live snapshot (`MetricsHub.render`).
Drain (`gptoss serve` on Ctrl-C): `MetricsHub.drain()` -> every front door learns it at its next push and refuses
new requests (503 / UNAVAILABLE) -> `drain_status()` says how many requests the front doors still hold, counting only
pushes made after the front door knew -> at 0 (or the grace period) the caller stops Serve.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from cluster.metrics import MetricsStore

log = logging.getLogger(__name__)
PUSH_TIMEOUT_S = 5.0  # a push the hub does not answer in this long is dropped
FINAL_PUSH_TIMEOUT_S = 1.0  # the last push of a stopping source (the hub may be stopping too)


@dataclass
class DoorState:
    """What a front door last said of itself."""

    in_flight: int  # generation requests it holds (admitted, not yet finished)
    draining: bool  # it was refusing new requests when it said so
    at: float  # time.monotonic() of the push


class MetricsHub:
    """Latest metrics of every source (dropped after 30 silent push intervals or 60 s) and the drain flag."""

    def __init__(self, push_interval_s: float):
        self.store = MetricsStore(ttl_s=max(60.0, 30 * push_interval_s))
        self.draining = False
        self.doors: dict[str, DoorState] = {}

    def push(self, source: str, families, final: bool = False, door: dict | None = None) -> dict:
        """Record a snapshot; a front door also says `{"in_flight": n, "draining": bool}`. Returns the control
        state: {"draining": bool}."""
        self.store.push(source, families, final)
        if door is not None:
            self.doors[source] = DoorState(door["in_flight"], door["draining"], time.monotonic())
        if final:
            self.doors.pop(source, None)
        return {"draining": self.draining}

    def render(self) -> bytes:
        return self.store.render()

    def drain(self) -> None:
        """From now on every front door refuses new requests (each learns it at its next push)."""
        if not self.draining:
            log.info("draining: front doors refuse new requests from their next push on")
        self.draining = True

    def drain_status(self) -> dict:
        """{"pending": front doors that have not yet confirmed the drain, "in_flight": requests they hold}."""
        live = {s: d for s, d in self.doors.items() if time.monotonic() - d.at <= self.store.ttl_s}
        return {"pending": sorted(s for s, d in live.items() if not d.draining),
                "in_flight": sum(d.in_flight for d in live.values())}


class MetricsPusher:
    """Pushes `snapshot()` (and, for a front door, `door()`) to the hub every `interval_s` from a task on the running
    event loop; `draining` follows the hub's answer. Metrics never fail a request: a failed push is logged."""

    def __init__(self, hub, source: str, snapshot, interval_s: float, door=None):
        self.hub, self.source, self.snapshot, self.interval_s, self.door = hub, source, snapshot, interval_s, door
        self.draining = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start pushing (idempotent; needs a running event loop)."""
        if self.hub is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.push()
            await asyncio.sleep(self.interval_s)

    async def push(self, final: bool = False) -> None:
        if self.hub is None:
            return
        try:
            door = self.door() if self.door is not None else None
            answer = await asyncio.wait_for(self.hub.push.remote(self.source, self.snapshot(), final, door),
                                            FINAL_PUSH_TIMEOUT_S if final else PUSH_TIMEOUT_S)
            self.draining = self.draining or bool(answer and answer.get("draining"))
        except Exception as err:  # noqa: BLE001 - metrics must never fail a request or take a replica down
            log.warning("metrics push from %s failed: %r", self.source, err)

    async def stop(self) -> None:
        """Stop the loop and push a last, final snapshot (a planned stop: not a lost replica)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
            await self.push(final=True)
