"""Which KV blocks each request holds: block tables per layer group, prefix-cache hits, sliding-window release.

Layers fall into groups by attention kind: full-attention layers keep every block of a sequence; sliding layers
(window W) keep only blocks that a future query can still see and hand the rest back. Groups share one
`BlockPool`: a block id is used by one group at a time, and physical slot j of the cache holds, for that block,
the KV of the j-th layer of whichever group owns it (`KVCacheLayout.layer_slots`). gpt-oss alternates sliding and
full layers, so both groups have L/2 layers and no slot is wasted.

Prefix caching: full blocks are hashed along the prefix chain (each hash covers every token before it). A
request reuses the longest prefix for which the full group has every block and the sliding group has the blocks
inside the window of the first token it still has to compute.
"""

import hashlib
from array import array
from dataclasses import dataclass

from engine.block_pool import NULL_BLOCK, BlockPool
from engine.model.config import GptOssConfig
from engine.request import Request


@dataclass(frozen=True)
class KVCacheLayout:
    block_size: int  # tokens per block
    windows: tuple[int | None, ...]  # per group: the sliding window, or None for full attention
    layer_slots: tuple[tuple[int, int], ...]  # per layer: (group, physical slot)
    num_slots: int  # physical per-layer caches (the largest group's layer count)

    @classmethod
    def for_model(cls, config: GptOssConfig, block_size: int) -> "KVCacheLayout":
        windows = sorted({config.window_of(i) for i in range(config.num_hidden_layers)}, key=lambda w: w or 0)
        count = dict.fromkeys(range(len(windows)), 0)
        slots = []
        for layer in range(config.num_hidden_layers):
            group = windows.index(config.window_of(layer))
            slots.append((group, count[group]))
            count[group] += 1
        return cls(block_size, tuple(windows), tuple(slots), max(count.values()))

    def release_bounds(self, num_computed: int) -> tuple[int, ...]:
        """Per group, how many leading blocks no query from position `num_computed` on can see (0 for a full
        group): the block-table entries a sliding group has handed back, which hold the null block."""
        return tuple(0 if w is None else max(0, (num_computed - w + 1) // self.block_size) for w in self.windows)


def blocks_for_sequence(layout: KVCacheLayout, num_tokens: int, max_chunk: int) -> int:
    """Most blocks one sequence of `num_tokens` holds at once (the engine admits a request only if this fits the
    cache). A full group holds all of its blocks; a sliding group holds the window before a chunk plus the chunk
    itself (a prefill chunk is written before any of it can be released), chunks being at most `max_chunk`
    (max_num_batched_tokens) long."""
    bs = layout.block_size
    chunk = min(num_tokens, max_chunk)
    every = -(-num_tokens // bs)
    return sum(every if w is None else min(every, -(-(w - 1 + chunk) // bs) + 1) for w in layout.windows)


@dataclass
class PrefixHit:
    num_tokens: int  # prompt tokens whose KV is reused
    blocks: list[list[int]]  # per group: the block table prefix (NULL_BLOCK where a window lets go)


def hash_block(parent: bytes, tokens: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class KVCacheManager:
    def __init__(self, layout: KVCacheLayout, num_blocks: int, enable_caching: bool = True):
        self.layout = layout
        self.block_size = layout.block_size
        self.pool = BlockPool(num_blocks, enable_caching)
        self.tables: dict[str, list[list[int]]] = {}  # request id -> per group block ids
        self.hashes: dict[str, list[bytes]] = {}  # request id -> hashes of its full blocks so far
        self.num_cached_blocks: dict[str, int] = {}  # request id -> blocks already indexed
        self.released: dict[str, tuple[int, ...]] = {}  # request id -> window release bounds last applied
        self.sent: dict[str, int] = {}  # request id -> length of its table the workers have been sent
        self.prefix_queries = 0  # tokens looked up in the prefix cache (cumulative)
        self.prefix_hits = 0  # of which found

    @property
    def num_groups(self) -> int:
        return len(self.layout.windows)

    # ---- prefix cache ----
    def block_hashes(self, request: Request, num_tokens: int) -> list[bytes]:
        """Hashes of the full blocks among the request's first `num_tokens` tokens (extended incrementally)."""
        hashes = self.hashes.setdefault(request.request_id, [])
        bs, limit = self.block_size, min(num_tokens, request.num_tokens)
        while (len(hashes) + 1) * bs <= limit:
            i = len(hashes)
            tokens = request.token_ids_between(i * bs, (i + 1) * bs)
            hashes.append(hash_block(hashes[-1] if hashes else b"", tokens))
        return hashes

    def find_prefix(self, request: Request) -> PrefixHit:
        """The longest cached prefix usable by every group (at least one token is always left to compute)."""
        num_tokens = request.num_tokens
        usable = self.block_hashes(request, num_tokens)[: (num_tokens - 1) // self.block_size]
        hit, previous = len(usable), None
        while hit != previous:  # a group that shortens the hit can invalidate an earlier group's: repeat until stable
            previous = hit
            for group, window in enumerate(self.layout.windows):
                hit = self._longest_hit(group, window, usable[:hit])
        blocks = [self._hit_blocks(g, w, usable[:hit]) for g, w in enumerate(self.layout.windows)]
        return PrefixHit(hit * self.block_size, blocks)

    def count_prefix(self, num_queried: int, num_hit: int) -> None:
        """Record one admitted lookup in the prefix-cache counters."""
        self.prefix_queries += num_queried
        self.prefix_hits += num_hit

    def _needed_from(self, window: int | None, num_blocks: int) -> int:
        """First block a query right after `num_blocks` full blocks still sees."""
        if window is None:
            return 0
        return max(0, num_blocks * self.block_size - window + 1) // self.block_size

    def _longest_hit(self, group: int, window: int | None, hashes: list[bytes]) -> int:
        lookup = self.pool.lookup
        if window is None:
            return next((i for i, h in enumerate(hashes) if lookup(group, h) is None), len(hashes))
        for n in range(len(hashes), 0, -1):
            if all(lookup(group, h) is not None for h in hashes[self._needed_from(window, n) : n]):
                return n
        return 0

    def _hit_blocks(self, group: int, window: int | None, hashes: list[bytes]) -> list[int]:
        start = self._needed_from(window, len(hashes))
        return [NULL_BLOCK] * start + [self.pool.lookup(group, h) for h in hashes[start:]]

    # ---- allocation ----
    def allocate(self, request: Request, num_new_tokens: int, hit: PrefixHit | None = None) -> bool:
        """Give the request slots for its next `num_new_tokens` tokens; False (and no change) if blocks run out."""
        rid = request.request_id
        if rid not in self.tables:
            self.tables[rid] = [list(b) for b in hit.blocks] if hit else [[] for _ in self.layout.windows]
            self.num_cached_blocks[rid] = len(self.tables[rid][0])
            reused = [b for table in self.tables[rid] for b in table if b != NULL_BLOCK]
            if not self._fits(request, num_new_tokens, reused):
                del self.tables[rid], self.num_cached_blocks[rid]
                return False
            self.pool.touch(reused)
        end = request.num_computed_tokens + num_new_tokens
        if self._nothing_to_do(request, end):
            return True
        self._release_out_of_window(request)
        if not self._fits(request, num_new_tokens, []):
            return False
        for table in self.tables[rid]:
            table.extend(self.pool.allocate(self._blocks_for(end) - len(table)))
        self._cache_full_blocks(request, end)
        return True

    def _nothing_to_do(self, request: Request, end: int) -> bool:
        """The common decode step: the last block has room, no block leaves a window, none becomes full."""
        bs, computed = self.block_size, request.num_computed_tokens
        if end // bs != computed // bs or end % bs == 0:  # crosses or completes a block
            return False
        tables, released = self.tables[request.request_id], self.released.get(request.request_id)
        if released is None or released != self.layout.release_bounds(computed):
            return False
        return all(len(t) * bs >= end for t in tables)

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _fits(self, request: Request, num_new_tokens: int, reused: list[int]) -> bool:
        needed = self._blocks_for(request.num_computed_tokens + num_new_tokens)
        new = sum(max(0, needed - len(t)) for t in self.tables[request.request_id])
        taken_from_free = sum(1 for b in set(reused) if self.pool.blocks[b].ref_count == 0)
        return new <= self.pool.num_free - taken_from_free

    def _release_out_of_window(self, request: Request) -> None:
        """Hand back sliding-group blocks whose every position is outside the window of the next query."""
        bounds = self.released[request.request_id] = self.layout.release_bounds(request.num_computed_tokens)
        for table, bound in zip(self.tables[request.request_id], bounds):
            for i in range(min(bound, len(table))):  # blocks [0, bound); a full group's bound is 0
                if table[i] != NULL_BLOCK:
                    self.pool.release([table[i]])
                    table[i] = NULL_BLOCK

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        rid = request.request_id
        full = min(len(self.block_hashes(request, num_tokens)), num_tokens // self.block_size)
        hashes = self.hashes[rid]
        for i in range(self.num_cached_blocks[rid], full):
            for group, table in enumerate(self.tables[rid]):
                if table[i] != NULL_BLOCK:
                    self.pool.cache(group, table[i], hashes[i])
        self.num_cached_blocks[rid] = max(self.num_cached_blocks[rid], full)

    def free(self, request: Request) -> None:
        """Return every block of the request (tail blocks first, so they are evicted before shared heads)."""
        rid = request.request_id
        for table in self.tables.pop(rid, []):
            self.pool.release(list(reversed(table)))
        self.num_cached_blocks.pop(rid, None)
        self.hashes.pop(rid, None)
        self.released.pop(rid, None)
        self.sent.pop(rid, None)

    def block_tables(self, request: Request) -> list[list[int]]:
        return self.tables[request.request_id]

    def new_blocks(self, request: Request) -> tuple[int, list[list[int]]]:
        """What the workers do not have of this request's tables: (start, per group the entries from `start` on).
        start 0 means the whole table (first scheduled, or again after a preemption). Entries the workers already
        hold change only by falling out of a sliding window, which they apply themselves (release_bounds)."""
        rid = request.request_id
        start, tables = self.sent.get(rid, 0), self.tables[rid]
        self.sent[rid] = len(tables[0])
        return start, [t[start:] for t in tables]
