"""Prefix-affinity routing across one model's replicas (a Ray Serve `RequestRouter`).

Flow: the caller (HTTP ingress or gRPC gateway) hashes the start of each request's prompt into chained chunk hashes
(`protocol.prefix_hashes`) -> `choose_replicas` asks the `PrefixIndex` which live replica last served the longest
of those prefixes, and for a prefix this router has not seen, the `HashRing` (consistent hashing on the first
`hash_chunks` chunks, so every caller picks the same replica) -> that replica is ranked first unless it is more
than `imbalance_threshold` requests busier than the least loaded one or reports a KV cache fuller than
`max_kv_cache_usage` (load: Serve's ongoing-request count, or the replica's own report of running + waiting
requests via `LLMServer.record_routing_stats`, whichever is higher); then every other replica in one rank, where
Serve takes the least loaded -> replicas the request asks to avoid (a retry after a failure) come last ->
`on_request_routed` records the choice for the request's prefixes and tells the caller's request object.
"""

import bisect
import hashlib
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


class HashRing:
    """Consistent hashing of prefix keys onto replica ids: `vnodes` points per replica, so a replica that comes or
    goes moves only the keys next to its points."""

    def __init__(self, chunks: int = 2, vnodes: int = 64):
        self.chunks, self.vnodes = chunks, vnodes
        self._ring: tuple[frozenset, list[int], list[str]] = (frozenset(), [], [])

    def owner(self, hashes: list[int], replicas: list[str]) -> str | None:
        """The replica owning the key of the first `chunks` chunk hashes (fewer when the prompt is shorter)."""
        if not hashes or not replicas:
            return None
        points, owners = self._points(frozenset(replicas))
        key = hashes[min(len(hashes), self.chunks) - 1]
        return owners[bisect.bisect_left(points, key) % len(points)]

    def _points(self, replicas: frozenset) -> tuple[list[int], list[str]]:
        if self._ring[0] != replicas:
            pairs = sorted((_point(f"{r}#{i}"), r) for r in replicas for i in range(self.vnodes))
            self._ring = (replicas, [p for p, _ in pairs], [r for _, r in pairs])
        return self._ring[1], self._ring[2]


def _point(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def rank(hashes: list[int], loads: dict[str, int | None], index: PrefixIndex, imbalance_threshold: int,
         ring: HashRing | None = None, kv_usage: dict[str, float] | None = None, max_kv_cache_usage: float = 1.0,
         avoid: tuple[str, ...] | list[str] = ()) -> list[list[str]]:
    """Replica ids in preference ranks: the prefix holder (learned, else its ring replica) first when its load
    and KV cache allow, then the others in one rank; replicas in `avoid` last.

    `loads` maps each candidate to its ongoing requests (None: unknown, counted as 0); `kv_usage` to the KV-cache
    fraction it reported (missing: unknown, counted as 0).
    """
    live = {r: v for r, v in loads.items() if r not in avoid} or dict(loads)
    last = [r for r in loads if r not in live]
    if not live:
        return []
    owner, _ = index.match(hashes, set(live))
    if owner is None and ring is not None:
        owner = ring.owner(hashes, list(live))
    least = min(v or 0 for v in live.values())
    fits = owner is not None and (live[owner] or 0) - least <= imbalance_threshold \
        and (kv_usage or {}).get(owner, 0.0) <= max_kv_cache_usage
    ranks = [[owner], [r for r in live if r != owner]] if fits else [list(live)]
    return [group for group in ranks + [last] if group]


def _request(pending_request: PendingRequest | None):
    """The request object among the call's arguments (a protocol.GenerateRequest), or None."""
    if pending_request is None:
        return None
    return next((arg for arg in pending_request.args or () if hasattr(arg, "prefix_hashes")), None)


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve glue around `rank`, `PrefixIndex` and `HashRing` (configured by `RoutingConfig`)."""

    def initialize_state(self, imbalance_threshold: int = 8, max_index_entries: int = 100_000, hash_chunks: int = 2,
                         max_kv_cache_usage: float = 1.0, **_):
        self.imbalance_threshold = imbalance_threshold
        self.max_kv_cache_usage = max_kv_cache_usage
        self.index = PrefixIndex(max_index_entries)
        self.ring = HashRing(hash_chunks)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads, kv = {}, {}
        for rid, replica in by_id.items():
            stats = replica.routing_stats or {}
            reported = stats.get("num_running", 0) + stats.get("num_waiting", 0) if stats else None
            cached = self._replica_queue_len_cache.get(replica.replica_id)
            loads[rid] = None if cached is None and reported is None else max(cached or 0, reported or 0)
            kv[rid] = stats.get("kv_cache_usage", 0.0)
        req = _request(pending_request)
        hashes = getattr(req, "prefix_hashes", None) or []
        avoid = getattr(req, "avoid_replicas", None) or ()
        return [[by_id[rid] for rid in group] for group in rank(hashes, loads, self.index, self.imbalance_threshold,
                                                                 self.ring, kv, self.max_kv_cache_usage, avoid)]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        req = _request(pending_request)
        if req is None:
            return
        if hasattr(req, "routed_replica"):  # the caller's own object: it learns where its request went
            req.routed_replica = replica_id.unique_id
        if req.prefix_hashes:
            self.index.record(req.prefix_hashes, replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        self.index.forget(replica_id.unique_id)
