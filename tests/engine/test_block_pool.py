"""BlockPool: exact allocation order, reference counts, free-queue (eviction) order and the prefix-cache index.

The exact tests pin block ids the way vLLM's block-pool tests do; the stateful test drives random operation
sequences against a plain-list model of the free queue and reference counts.
"""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine.block_pool import NULL_BLOCK, BlockPool


# ---------------------------------------------------------------- helpers
def h(i: int) -> bytes:
    """A distinct fake block hash."""
    return i.to_bytes(16, "little")


def free_list(pool: BlockPool) -> list[int]:
    """The free queue, head (next evicted) first."""
    return list(pool.free)


def refs(pool: BlockPool, ids) -> list[int]:
    return [pool.blocks[i].ref_count for i in ids]


# ---------------------------------------------------------------- construction and the null block
def test_needs_two_blocks():
    """A pool must hold the null block and at least one usable block."""
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockPool(1)
    assert BlockPool(2).num_free == 1


def test_null_block_never_handed_out():
    """Block 0 is not in the free queue, is never allocated, and releasing it is a no-op."""
    pool = BlockPool(5)
    assert free_list(pool) == [1, 2, 3, 4]
    assert pool.allocate(4) == [1, 2, 3, 4]
    assert NULL_BLOCK not in pool.free
    with pytest.raises(MemoryError, match="asked for 1 KV blocks, 0 free"):
        pool.allocate(1)
    pool.release([NULL_BLOCK, NULL_BLOCK])
    assert pool.blocks[NULL_BLOCK].ref_count == 1
    assert pool.num_free == 0


# ---------------------------------------------------------------- allocation order and ref counts
def test_allocation_takes_from_the_head_in_order():
    """A fresh pool hands out ids 1, 2, 3, ... in order, each with ref_count 1."""
    pool = BlockPool(8)
    assert pool.allocate(2) == [1, 2]
    assert pool.allocate(3) == [3, 4, 5]
    assert refs(pool, [1, 2, 3, 4, 5]) == [1] * 5
    assert free_list(pool) == [6, 7]
    assert pool.allocate(0) == []


def test_allocate_is_all_or_nothing():
    """Asking for more blocks than are free raises and leaves the free queue untouched."""
    pool = BlockPool(4)
    pool.allocate(1)
    with pytest.raises(MemoryError):
        pool.allocate(3)
    assert free_list(pool) == [2, 3]


def test_touch_and_release_ref_counts():
    """touch adds a reference, release drops one; a block joins the free queue only at ref_count 0."""
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    pool.touch([b, b])
    assert pool.blocks[b].ref_count == 3
    pool.release([b])
    pool.release([b])
    assert pool.blocks[b].ref_count == 1 and b not in pool.free
    pool.release([b])
    assert pool.blocks[b].ref_count == 0 and free_list(pool) == [2, 3, b]
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release([b])


def test_freed_blocks_go_to_the_tail_in_the_given_order():
    """Blocks reaching ref_count 0 are appended in the order release lists them, and reallocated in that order."""
    pool = BlockPool(6)
    pool.allocate(5)
    pool.release([3, 1])
    pool.release([5, 2, 4])
    assert free_list(pool) == [3, 1, 5, 2, 4]
    assert pool.allocate(5) == [3, 1, 5, 2, 4]


def test_touching_a_free_block_pulls_it_out_of_the_queue():
    """A prefix hit on a free (cached) block takes it out of the queue; freeing it again puts it at the tail."""
    pool = BlockPool(5)
    pool.allocate(4)
    pool.release([1, 2, 3, 4])
    pool.touch([2])
    assert free_list(pool) == [1, 3, 4] and pool.blocks[2].ref_count == 1
    pool.release([2])
    assert free_list(pool) == [1, 3, 4, 2]


# ---------------------------------------------------------------- prefix-cache index and eviction
def test_cached_free_blocks_are_evicted_lru_and_lose_their_hash():
    """Freed blocks keep their hash (still found by lookup) until allocation evicts them, head first."""
    pool = BlockPool(4)
    ids = pool.allocate(3)
    for b in ids:
        pool.cache(0, b, h(b))
    pool.release([2, 3, 1])  # LRU order: 2 is evicted first, then 3, then 1
    assert [pool.lookup(0, h(b)) for b in (1, 2, 3)] == [1, 2, 3]

    assert pool.allocate(1) == [2]
    assert pool.blocks[2].block_hash is None and pool.lookup(0, h(2)) is None
    assert pool.lookup(0, h(3)) == 3 and pool.lookup(0, h(1)) == 1

    pool.touch([1])  # a prefix hit saves block 1 from eviction
    assert pool.allocate(1) == [3]
    assert pool.lookup(0, h(3)) is None and pool.lookup(0, h(1)) == 1
    assert pool.num_free == 0


def test_cache_is_per_group_and_keeps_the_first_block_for_a_hash():
    """The index key is (group, hash): one hash may name a block per group; a duplicate in a group stays unindexed."""
    pool = BlockPool(5)
    a, b, c, _ = pool.allocate(4)
    pool.cache(0, a, h(7))
    pool.cache(1, b, h(7))
    pool.cache(0, c, h(7))  # duplicate of an indexed hash in group 0
    assert pool.lookup(0, h(7)) == a and pool.lookup(1, h(7)) == b
    assert pool.blocks[c].block_hash is None
    assert (pool.blocks[a].group, pool.blocks[b].group) == (0, 1)
    pool.cache(1, a, h(8))  # a block already indexed is not indexed twice
    assert pool.lookup(1, h(8)) is None and pool.blocks[a].block_hash == h(7)


def test_caching_disabled():
    """With enable_caching=False nothing is indexed and lookups always miss."""
    pool = BlockPool(3, enable_caching=False)
    (b,) = pool.allocate(1)
    pool.cache(0, b, h(1))
    assert pool.lookup(0, h(1)) is None and pool.blocks[b].block_hash is None and pool.cached == {}


def test_reset_prefix_cache_drops_only_free_blocks():
    """reset_prefix_cache forgets the hashes of free blocks but keeps those of blocks still held."""
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache(0, a, h(1))
    pool.cache(0, b, h(2))
    pool.release([a])
    pool.reset_prefix_cache()
    assert pool.lookup(0, h(1)) is None and pool.blocks[a].block_hash is None
    assert pool.lookup(0, h(2)) == b


def test_usage_counts_cached_free_blocks_as_free():
    """usage() is the fraction of usable blocks held by requests."""
    pool = BlockPool(5)
    assert pool.usage() == 0.0
    ids = pool.allocate(3)
    assert pool.usage() == 0.75
    pool.cache(0, ids[0], h(0))
    pool.release(ids)
    assert pool.usage() == 0.0


# ---------------------------------------------------------------- stateful: random operations vs a list model
class PoolMachine(RuleBasedStateMachine):
    """Random allocate/touch/release/cache/reset sequences checked against a model of queue order and refs."""

    NUM_BLOCKS = 7

    def __init__(self):
        super().__init__()
        self.pool = BlockPool(self.NUM_BLOCKS)
        self.queue = list(range(1, self.NUM_BLOCKS))  # model free queue, head first
        self.ref = {b: 0 for b in range(1, self.NUM_BLOCKS)}
        self.hash_of: dict[int, bytes] = {}  # model index: block -> hash
        self.next_hash = 0

    def held(self) -> list[int]:
        return sorted(b for b, r in self.ref.items() if r > 0)

    @rule(n=st.integers(0, 7))
    def allocate(self, n):
        if n > len(self.queue):
            with pytest.raises(MemoryError):
                self.pool.allocate(n)
            return
        expected, self.queue = self.queue[:n], self.queue[n:]
        assert self.pool.allocate(n) == expected
        for b in expected:
            self.ref[b] = 1
            self.hash_of.pop(b, None)

    @rule(picks=st.lists(st.integers(0, 100), max_size=4))
    def touch_cached(self, picks):
        """Touch blocks that are held or cached (the only ones a prefix hit can name)."""
        candidates = sorted(set(self.held()) | set(self.hash_of))
        if not candidates:
            return
        ids = [candidates[p % len(candidates)] for p in picks]
        self.pool.touch(ids)
        for b in ids:
            if self.ref[b] == 0:
                self.queue.remove(b)
            self.ref[b] += 1

    @rule(picks=st.lists(st.integers(0, 100), max_size=4))
    def release(self, picks):
        ids = []
        budget = dict(self.ref)
        for p in picks:
            held = sorted(b for b, r in budget.items() if r > 0)
            if not held:
                break
            b = held[p % len(held)]
            budget[b] -= 1
            ids.append(b)
        self.pool.release(ids)
        for b in ids:
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.queue.append(b)

    @rule(p=st.integers(0, 100))
    def cache(self, p):
        held = self.held()
        if not held:
            return
        b = held[p % len(held)]
        self.next_hash += 1
        self.pool.cache(0, b, h(self.next_hash))
        self.hash_of.setdefault(b, h(self.next_hash))

    @rule()
    def reset(self):
        self.pool.reset_prefix_cache()
        self.hash_of = {b: x for b, x in self.hash_of.items() if self.ref[b] > 0}

    @invariant()
    def matches_model(self):
        pool = self.pool
        assert free_list(pool) == self.queue
        assert {b: pool.blocks[b].ref_count for b in self.ref} == self.ref
        assert pool.blocks[NULL_BLOCK].ref_count == 1 and NULL_BLOCK not in pool.free
        assert {b: pool.blocks[b].block_hash for b in self.hash_of} == self.hash_of
        assert pool.cached == {(0, x): b for b, x in self.hash_of.items()}
        assert all(pool.blocks[b].ref_count == 0 for b in pool.free)


PoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_pool_against_model = PoolMachine.TestCase
