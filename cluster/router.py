"""Prefix-affinity routing across one model's replicas (a Ray Serve `RequestRouter`).

Flow: the ingress hashes the start of each request's prompt into chained chunk hashes (`protocol.prefix_hashes`)
-> `choose_replicas` asks the `PrefixIndex` which live replica last served the longest of those prefixes -> if
that replica is not more than `imbalance_threshold` requests busier than the least loaded one, it is ranked
first (its prefix cache likely holds the prompt's KV blocks), the others after it; otherwise every replica is
one rank and Serve takes the least loaded -> `on_request_routed` records the choice for the request's prefixes.
The index lives in each caller (ingress replica) and learns from that caller's traffic only.
"""

from collections import OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica


class PrefixIndex:
    """Bounded LRU map: prefix hash -> the replica that last served a prompt starting with that prefix."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._owner: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def match(self, hashes: list[int], live: set[str]) -> tuple[str | None, int]:
        """(replica holding the longest matching prefix among `live`, how many chunks match); (None, 0) if none."""
        for depth in range(len(hashes), 0, -1):
            owner = self._owner.get(hashes[depth - 1])
            if owner in live:
                self._owner.move_to_end(hashes[depth - 1])
                return owner, depth
        return None, 0

    def record(self, hashes: list[int], replica: str) -> None:
        for h in hashes:
            self._owner[h] = replica
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)

    def forget(self, replica: str) -> None:
        self._owner = OrderedDict((h, r) for h, r in self._owner.items() if r != replica)


def rank(hashes: list[int], loads: dict[str, int | None], index: PrefixIndex, imbalance_threshold: int
         ) -> list[list[str]]:
    """Replica ids in preference ranks: the prefix holder first when its load allows, else all in one rank.

    `loads` maps each candidate to its ongoing requests (None: unknown, counted as 0).
    """
    if not loads:
        return []
    owner, _ = index.match(hashes, set(loads))
    least = min(v or 0 for v in loads.values())
    if owner is not None and (loads[owner] or 0) - least <= imbalance_threshold:
        return [[owner], [r for r in loads if r != owner]]
    return [list(loads)]


def _hashes(pending_request: PendingRequest | None) -> list[int]:
    if pending_request is None:
        return []
    for arg in pending_request.args or ():
        hashes = getattr(arg, "prefix_hashes", None)
        if hashes is not None:
            return hashes
    return []


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve glue around `rank` and `PrefixIndex` (configured by `RoutingConfig`)."""

    def initialize_state(self, imbalance_threshold: int = 8, max_index_entries: int = 100_000, **_):
        self.imbalance_threshold = imbalance_threshold
        self.index = PrefixIndex(max_index_entries)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {rid: self._replica_queue_len_cache.get(r.replica_id) for rid, r in by_id.items()}
        return [[by_id[rid] for rid in group] for group in rank(_hashes(pending_request), loads, self.index,
                                                                 self.imbalance_threshold) if group]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        hashes = _hashes(pending_request)
        if hashes:
            self.index.record(hashes, replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        self.index.forget(replica_id.unique_id)
