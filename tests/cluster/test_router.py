"""Prefix-affinity policy: exact choices for given loads and index contents."""

from cluster.protocol import prefix_hashes
from cluster.router import PrefixIndex, rank


def test_prefix_hashes_are_chained():
    a, b = prefix_hashes("x" * 512 + "tail-a", 256), prefix_hashes("x" * 512 + "tail-b", 256)
    assert a == b and len(a) == 2  # partial chunks are not hashed
    c = prefix_hashes("y" * 256 + "x" * 256, 256)
    assert c[1] != a[1]  # the same chunk after a different prefix hashes differently
    assert prefix_hashes("short", 256) == []


def test_longest_prefix_owner_wins():
    index = PrefixIndex()
    index.record([1, 2], "r1")
    index.record([1, 2, 3, 4], "r2")
    assert index.match([1, 2, 3, 4, 5], {"r1", "r2"}) == ("r2", 4)
    assert index.match([1, 2, 9], {"r1", "r2"}) == ("r2", 2)  # r2 served [1, 2] last
    assert index.match([1, 2, 3], {"r1"}) == (None, 0)  # r2 is gone; r1 no longer owns [1, 2]
    assert index.match([7], {"r1", "r2"}) == (None, 0)


def test_rank_prefers_owner_unless_too_busy():
    index = PrefixIndex()
    index.record([1, 2], "r1")
    assert rank([1, 2], {"r1": 3, "r2": 0}, index, imbalance_threshold=4) == [["r1"], ["r2"]]
    assert rank([1, 2], {"r1": 9, "r2": 0}, index, imbalance_threshold=4) == [["r1", "r2"]]  # least loaded wins
    assert rank([5], {"r1": 0, "r2": None}, index, imbalance_threshold=4) == [["r1", "r2"]]
    assert rank([1], {}, index, 4) == []


def test_index_is_bounded_lru_and_forgets_dead_replicas():
    index = PrefixIndex(max_entries=3)
    index.record([1, 2, 3], "r1")
    index.match([1], {"r1"})  # touch 1: now 2 is the oldest
    index.record([4], "r2")
    assert len(index) == 3 and index.match([2], {"r1", "r2"}) == (None, 0)
    index.forget("r1")
    assert index.match([1], {"r1", "r2"}) == (None, 0) and index.match([4], {"r2"}) == ("r2", 1)
