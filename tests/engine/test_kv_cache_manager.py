"""KVCacheManager: exact block tables, prefix-cache hits (full and sliding groups), sliding-window release.

Requests are plain `Request` objects; "computing" a chunk is `allocate` followed by advancing
`num_computed_tokens`, which is all the scheduler does around the model.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_pool import NULL_BLOCK
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager, hash_block
from engine.model.config import FULL, SLIDING, GptOssConfig
from engine.request import Request
from engine.sampling_params import SamplingParams

# ---------------------------------------------------------------- helpers
FULL_ONLY = KVCacheLayout(block_size=4, windows=(None,), layer_slots=((0, 0),), num_slots=1)
FULL_SLIDING = KVCacheLayout(block_size=4, windows=(None, 8), layer_slots=((1, 0), (0, 0)), num_slots=1)
SLIDING_FULL = KVCacheLayout(block_size=4, windows=(8, None), layer_slots=((0, 0), (1, 0)), num_slots=1)


def req(rid: str, tokens, max_tokens: int = 64) -> Request:
    return Request(rid, list(tokens), SamplingParams(max_tokens=max_tokens), eos_token_ids=frozenset(),
                   detokenizer=None)


def compute(kv: KVCacheManager, r: Request, n: int, hit=None) -> list[list[int]]:
    """Allocate for the next n tokens (must fit), mark them computed, return a copy of the tables."""
    assert kv.allocate(r, n, hit)
    r.num_computed_tokens += n
    return [list(t) for t in kv.block_tables(r)]


def admit(kv: KVCacheManager, r: Request, n: int | None = None):
    """What the scheduler does for a waiting request: look up its prefix, then allocate the rest (or n)."""
    hit = kv.find_prefix(r)
    r.num_computed_tokens = hit.num_tokens
    compute(kv, r, (r.num_tokens - hit.num_tokens) if n is None else n, hit)
    kv.count_prefix(r.num_tokens, hit.num_tokens)
    return hit


def run_to(kv: KVCacheManager, r: Request, total: int, token: int = 1):
    """Decode one token at a time (sample, then compute it) until the request holds `total` tokens."""
    while r.num_tokens < total:
        r.append(token)
        compute(kv, r, 1)


def prefix_hashes(tokens, bs: int) -> list[bytes]:
    out = []
    for i in range(len(tokens) // bs):
        out.append(hash_block(out[-1] if out else b"", list(tokens[i * bs:(i + 1) * bs])))
    return out


A = list(range(100, 140))  # a prompt source; prompts below are slices of it


# ---------------------------------------------------------------- layout
def test_layout_for_model_puts_full_group_first():
    """for_model: one group per attention kind, full (None) first, layers numbered within their group."""
    cfg = GptOssConfig(num_hidden_layers=4, num_experts=4, experts_per_token=2, hidden_size=64,
                      intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      vocab_size=100, sliding_window=8, layer_types=(SLIDING, FULL, SLIDING, FULL))
    layout = KVCacheLayout.for_model(cfg, block_size=4)
    assert layout == KVCacheLayout(4, (None, 8), ((1, 0), (0, 0), (1, 1), (0, 1)), 2)


# ---------------------------------------------------------------- full attention
def test_allocation_ids_and_caching_of_full_blocks_only():
    """A 10-token prompt gets blocks 1, 2, 3; only the two full blocks are indexed; decoding fills block 3
    (indexed once full) and then takes block 4."""
    kv = KVCacheManager(FULL_ONLY, 10)
    r = req("a", A[:10])
    assert compute(kv, r, 10) == [[1, 2, 3]]
    hashes = prefix_hashes(A[:10], 4)
    assert [kv.pool.lookup(0, x) for x in hashes] == [1, 2]
    assert kv.pool.blocks[3].block_hash is None
    run_to(kv, r, 12)  # tokens 10, 11 fill block 3
    assert kv.block_tables(r) == [[1, 2, 3]]
    assert kv.pool.lookup(0, prefix_hashes(r.all_token_ids, 4)[2]) == 3
    run_to(kv, r, 13)
    assert kv.block_tables(r) == [[1, 2, 3, 4]]
    assert kv.pool.num_free == 5


def test_chunks_allocate_incrementally():
    """A prompt computed in chunks of 3 grows its table block by block."""
    kv = KVCacheManager(FULL_ONLY, 10)
    r = req("a", A[:10])
    assert [compute(kv, r, 3)[0] for _ in range(3)] == [[1], [1, 2], [1, 2, 3]]


def test_blocks_past_the_scheduled_chunk_are_not_indexed():
    """A chunk ending mid-block indexes only the blocks it completes, though later prompt tokens are known
    (their KV is not computed yet, so a hit on them would read garbage)."""
    kv = KVCacheManager(FULL_ONLY, 10)
    r = req("a", A[:12])
    hashes = prefix_hashes(A[:12], 4)
    assert compute(kv, r, 6) == [[1, 2]]
    assert [kv.pool.lookup(0, x) for x in hashes] == [1, None, None]
    assert compute(kv, r, 6) == [[1, 2, 3]]
    assert [kv.pool.lookup(0, x) for x in hashes] == [1, 2, 3]


def test_allocate_fails_without_change_when_blocks_run_out():
    """allocate returns False and keeps no table when the request does not fit."""
    kv = KVCacheManager(FULL_ONLY, 3)  # 2 usable blocks
    r = req("a", A[:12])
    assert not kv.allocate(r, 12)
    assert kv.tables == {} and kv.pool.num_free == 2
    assert kv.allocate(r, 8)


def test_free_returns_tail_blocks_first():
    """free releases a request's table in reverse, so its tail is evicted before its (shareable) head."""
    kv = KVCacheManager(FULL_ONLY, 6)
    r = req("a", A[:12])
    compute(kv, r, 12)
    kv.free(r)
    assert list(kv.pool.free) == [4, 5, 3, 2, 1]
    assert kv.tables == {} and kv.hashes == {}


def test_prefix_hit_after_finish_reuses_the_same_block_ids():
    """A finished request's full blocks serve a later request with the same prefix: same ids, counted hits."""
    kv = KVCacheManager(FULL_ONLY, 10)
    a = req("a", A[:10])
    admit(kv, a)
    assert kv.block_tables(a) == [[1, 2, 3]]
    kv.free(a)
    assert list(kv.pool.free) == [4, 5, 6, 7, 8, 9, 3, 2, 1]

    b = req("b", A[:10])
    hit = admit(kv, b)
    assert hit.num_tokens == 8 and hit.blocks == [[1, 2]]
    assert kv.block_tables(b) == [[1, 2, 4]]  # block 3 held an unfinished block: recomputed into a new one
    assert [kv.pool.blocks[i].ref_count for i in (1, 2, 3, 4)] == [1, 1, 0, 1]
    assert (kv.prefix_queries, kv.prefix_hits) == (20, 8)


def test_shared_prefix_between_live_requests_counts_references():
    """Two live requests sharing a 2-block prefix hold the same ids, each with ref_count 2."""
    kv = KVCacheManager(FULL_ONLY, 10)
    a = req("a", A[:9])
    admit(kv, a)
    b = req("b", A[:8] + [7, 7, 7])
    hit = admit(kv, b)
    assert hit.num_tokens == 8
    assert kv.block_tables(a) == [[1, 2, 3]] and kv.block_tables(b) == [[1, 2, 4]]
    assert [kv.pool.blocks[i].ref_count for i in (1, 2, 3, 4)] == [2, 2, 1, 1]
    kv.free(a)
    assert [kv.pool.blocks[i].ref_count for i in (1, 2, 3)] == [1, 1, 0]
    assert list(kv.pool.free)[-1] == 3
    kv.free(b)
    assert kv.pool.num_free == 9


def test_at_least_one_token_is_left_to_compute():
    """A prompt that is exactly 2 cached blocks hits only 1 block: the last token must be computed to sample.
    Its recomputed copy of the second block is not indexed (the hash already names block 2)."""
    kv = KVCacheManager(FULL_ONLY, 10)
    a = req("a", A[:8])
    admit(kv, a)
    kv.free(a)
    b = req("b", A[:8])
    hit = admit(kv, b)
    assert hit.num_tokens == 4 and hit.blocks == [[1]]
    assert kv.block_tables(b) == [[1, 3]]
    assert kv.pool.blocks[3].block_hash is None
    assert kv.pool.lookup(0, prefix_hashes(A[:8], 4)[1]) == 2
    single = req("c", A[:1])
    assert kv.find_prefix(single).num_tokens == 0


def test_evicted_tail_shortens_the_hit():
    """Cached free blocks are evicted LRU: another request takes the finished request's tail block first,
    so a later identical prefix hits only the blocks still indexed."""
    kv = KVCacheManager(FULL_ONLY, 4)  # blocks 1..3
    a = req("a", A[:12])
    admit(kv, a)
    kv.free(a)
    assert list(kv.pool.free) == [3, 2, 1]
    other = req("o", [1, 2, 3])
    admit(kv, other)
    assert kv.block_tables(other) == [[3]]  # evicts a's last block
    b = req("b", A[:13])
    hit = kv.find_prefix(b)
    assert hit.num_tokens == 8 and hit.blocks == [[1, 2]]


def test_caching_disabled_never_hits():
    """With enable_caching=False the same prompt gets fresh blocks and no hits."""
    kv = KVCacheManager(FULL_ONLY, 10, enable_caching=False)
    a = req("a", A[:10])
    admit(kv, a)
    kv.free(a)
    b = req("b", A[:10])
    assert admit(kv, b).num_tokens == 0
    assert kv.block_tables(b) == [[4, 5, 6]]
    assert (kv.prefix_queries, kv.prefix_hits) == (20, 0)


# ---------------------------------------------------------------- sliding window
def test_sliding_release_exact_ids():
    """Sliding blocks (window 8, block 4) are handed back, oldest first, once no future query sees them;
    the full group keeps everything."""
    kv = KVCacheManager(FULL_SLIDING, 16)
    r = req("a", A[:16])
    assert compute(kv, r, 16) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    r.append(1)
    # next query at position 16 sees 9..16: blocks 0 (0-3) and 1 (4-7) are out of the window
    assert compute(kv, r, 1) == [[1, 2, 3, 4, 9], [0, 0, 7, 8, 10]]
    assert list(kv.pool.free) == [11, 12, 13, 14, 15, 5, 6]
    assert kv.pool.blocks[5].ref_count == 0 and kv.pool.blocks[5].block_hash is not None  # still cached
    run_to(kv, r, 20)  # query at 19 sees 12..19: block 2 (8-11) is out
    assert kv.block_tables(r) == [[1, 2, 3, 4, 9], [0, 0, 0, 8, 10]]
    assert list(kv.pool.free)[-3:] == [5, 6, 7]
    run_to(kv, r, 21)  # query at 20 sees 13..20: needs block 3 (12-15), blocks for 20 -> a new one
    assert kv.block_tables(r) == [[1, 2, 3, 4, 9, 11], [0, 0, 0, 8, 10, 12]]
    kv.free(r)
    assert kv.pool.num_free == 15


def test_sliding_release_keeps_every_block_a_query_still_sees():
    """Decoding token by token, each sliding table holds exactly the blocks overlapping the next query's window."""
    kv = KVCacheManager(FULL_SLIDING, 40)
    r = req("a", A[:3])
    compute(kv, r, 3)
    while r.num_tokens < 40:
        r.append(1)
        c = r.num_computed_tokens
        table = compute(kv, r, 1)[1]
        lo = max(0, c - 8 + 1) // 4
        assert all(b == NULL_BLOCK for b in table[:lo])
        assert all(b != NULL_BLOCK for b in table[lo:])
        assert len(table) == -(-(c + 1) // 4)


def test_sliding_prefix_hit_uses_null_blocks_before_the_window():
    """A hit through a sliding group: the blocks before the first query's window are NULL_BLOCK in the sliding
    table; only the in-window blocks are taken (ref counted), the full group takes every block."""
    kv = KVCacheManager(FULL_SLIDING, 16)
    a = req("a", A[:20])
    assert compute(kv, a, 20) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    kv.free(a)
    b = req("b", A[:21])
    hit = admit(kv, b)
    # first query at 20 sees 13..20: sliding blocks 3 (12-15) and 4 (16-19)
    assert hit.num_tokens == 20
    assert hit.blocks == [[1, 2, 3, 4, 5], [0, 0, 0, 9, 10]]
    assert kv.block_tables(b) == [[1, 2, 3, 4, 5, 11], [0, 0, 0, 9, 10, 12]]
    assert [kv.pool.blocks[i].ref_count for i in (6, 7, 8, 9, 10)] == [0, 0, 0, 1, 1]


def test_sliding_hit_needs_the_in_window_blocks():
    """The full group has every block, but the sliding group lost its early blocks (released mid-run, then
    evicted): a prefix whose window needs them is not taken, a longer one whose window does not, is."""
    kv = KVCacheManager(FULL_SLIDING, 13)  # blocks 1..12
    a = req("a", A[:16])
    assert compute(kv, a, 16) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    a.append(1)
    assert compute(kv, a, 1) == [[1, 2, 3, 4, 9], [0, 0, 7, 8, 10]]
    kv.free(a)
    assert list(kv.pool.free) == [11, 12, 5, 6, 9, 4, 3, 2, 1, 10, 8, 7]
    other = req("o", [1] * 8)
    assert compute(kv, other, 8) == [[11, 12], [5, 6]]  # evicts a's sliding blocks 0 and 1

    long = req("long", A[:16] + [2])  # first query at 16 sees 9..16: sliding blocks 2, 3 -> hit
    hit = kv.find_prefix(long)
    assert hit.num_tokens == 16 and hit.blocks == [[1, 2, 3, 4], [0, 0, 7, 8]]

    short = req("short", A[:12] + [2])  # window of 12 needs block 1, of 8 and 4 need block 0: all evicted
    hit = kv.find_prefix(short)
    assert hit.num_tokens == 0 and hit.blocks == [[], []]


def _evict(kv: KVCacheManager, block_ids: list[int]) -> None:
    """Evict specific cached free blocks: move every other free block behind them, then allocate them."""
    pool = kv.pool
    others = [b for b in pool.free if b not in block_ids]
    pool.touch(block_ids + others)
    pool.release(block_ids + others)
    assert list(pool.free)[:len(block_ids)] == block_ids
    pool.allocate(len(block_ids))
    pool.release(block_ids)


@pytest.mark.parametrize("layout", [
    FULL_SLIDING,
    SLIDING_FULL,  # once a bug: a group checked before a later one shortened the hit was never rechecked
])
def test_prefix_hit_is_valid_for_every_group_whatever_the_group_order(layout):
    """The sliding group has the in-window blocks for a 5-block hit, the full group only 2 blocks, and the
    sliding group has lost block 0 (needed by a 2-block hit): no prefix is usable by both, so the hit is 0.
    Every block in a hit table must be a real block, whatever order the layout lists its groups in."""
    kv = KVCacheManager(layout, 16)
    a = req("a", A[:20])
    tables = compute(kv, a, 20)
    kv.free(a)
    full, sliding = (tables[0], tables[1]) if layout.windows[0] is None else (tables[1], tables[0])
    _evict(kv, [full[2], sliding[0]])
    hit = kv.find_prefix(req("b", A[:21]))
    assert all(isinstance(b, int) for t in hit.blocks for b in t), hit.blocks
    assert hit.num_tokens == 0


# ---------------------------------------------------------------- property: find_prefix against a brute-force oracle
@st.composite
def cache_states(draw):
    """A layout, a finished request computed in random chunks, a random subset of its blocks evicted, and a new
    prompt sharing a random part of its tokens."""
    bs = draw(st.sampled_from([1, 2, 4]))
    w1, w2 = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    windows = draw(st.sampled_from([(None,), (None, w1), (w1,), (w1, None), (None, w1, w2), (w1, None, w2)]))
    layout = KVCacheLayout(bs, windows, tuple((g, 0) for g in range(len(windows))), 1)
    prompt = draw(st.lists(st.integers(0, 2), min_size=1, max_size=32))
    chunks = draw(st.lists(st.integers(1, 8), min_size=1, max_size=24))
    shared = len(prompt) + 4 - draw(st.integers(0, len(prompt) + 4))  # mostly long shared prefixes
    tail = draw(st.lists(st.integers(0, 2), min_size=1, max_size=6))
    rate = draw(st.sampled_from([0.1, 0.25, 0.5]))
    rnd = draw(st.randoms(use_true_random=False))
    evict = [rnd.random() < rate for _ in range(200)]
    return layout, prompt, chunks, (prompt + [1] * 4)[:shared] + tail, evict


def needed_from(window, n: int, bs: int) -> int:
    """Oracle: the first block the query at position n * bs sees (it sees keys p > q - window)."""
    return 0 if window is None else max(0, n * bs - window + 1) // bs


@settings(max_examples=150, deadline=None)
@given(cache_states())
def test_find_prefix_is_the_longest_prefix_every_group_can_serve(state):
    """find_prefix returns the longest n (leaving a token to compute) such that every group has every block its
    first query can see cached, with NULL_BLOCK before each sliding window; the hit is admitted and accounted."""
    layout, prompt, chunks, new_prompt, evict = state
    bs = layout.block_size
    kv = KVCacheManager(layout, 200)
    a = req("a", prompt, max_tokens=100)
    chunks = iter(chunks)
    while a.num_computed_tokens < a.num_tokens:  # prefill in chunks, then a few decode steps
        compute(kv, a, min(next(chunks, 1), a.num_tokens - a.num_computed_tokens))
        if a.num_computed_tokens == a.num_tokens and a.num_tokens < len(prompt) + 3:
            a.append(1)
    held = [b for t in kv.block_tables(a) for b in t if b != NULL_BLOCK]
    kv.free(a)
    cached = [b for b in kv.pool.free if kv.pool.blocks[b].block_hash is not None]
    _evict(kv, [b for b, e in zip(cached, evict) if e])
    assert len(set(held)) == len(held)

    b = req("b", new_prompt)
    hashes = prefix_hashes(new_prompt, bs)[:(len(new_prompt) - 1) // bs]

    def serves(n):
        return all(kv.pool.lookup(g, hashes[i]) is not None
                   for g, w in enumerate(layout.windows) for i in range(needed_from(w, n, bs), n))

    n = max(n for n in range(len(hashes) + 1) if serves(n))
    hit = kv.find_prefix(b)
    assert hit.num_tokens == n * bs < b.num_tokens
    assert hit.blocks == [[NULL_BLOCK] * needed_from(w, n, bs) + [kv.pool.lookup(g, hashes[i])
                                                                   for i in range(needed_from(w, n, bs), n)]
                          for g, w in enumerate(layout.windows)]
    free_before = kv.pool.num_free
    admit(kv, b)
    reused = {x for t in hit.blocks for x in t if x != NULL_BLOCK}
    assert all(kv.pool.blocks[x].ref_count == 1 for x in reused)
    new = sum(len(t) for t in kv.block_tables(b)) - sum(len(t) for t in hit.blocks)
    assert kv.pool.num_free == free_before - len(reused) - new
    kv.free(b)
    assert kv.pool.num_free == 199
