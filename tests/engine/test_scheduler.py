"""Scheduler + KVCacheManager without a model: budgets, order, preemption, admission limits, aborts, and a
stateful Hypothesis test that checks block accounting, sliding-window release and simulated KV contents after
every step of random workloads.

The fake model step: `schedule()`, then every scheduled request whose chunk reaches the end of its known
tokens samples one token (`update`).
"""

import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.block_pool import NULL_BLOCK
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager, blocks_for_sequence, hash_block
from engine.request import Request, Status
from engine.sampling_params import SamplingParams
from engine.scheduler import QueueFullError, Scheduler, SchedulerConfig

# ---------------------------------------------------------------- helpers
FULL_ONLY = KVCacheLayout(block_size=4, windows=(None,), layer_slots=((0, 0),), num_slots=1)
FULL_SLIDING = KVCacheLayout(block_size=4, windows=(None, 8), layer_slots=((1, 0), (0, 0)), num_slots=1)


def req(rid: str, prompt, max_tokens: int = 4, priority: int = 0, stop_token_ids=None) -> Request:
    params = SamplingParams(max_tokens=max_tokens, priority=priority, stop_token_ids=stop_token_ids)
    return Request(rid, list(prompt), params, eos_token_ids=frozenset(), detokenizer=None)


def make(layout=FULL_ONLY, num_blocks: int = 64, caching: bool = True, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(**config), KVCacheManager(layout, num_blocks, enable_caching=caching))


def sample_all(out, token_of=lambda r: 1) -> dict:
    """The fake model: requests whose chunk reaches the end of their known tokens sample one token."""
    return {r.request_id: (token_of(r), None) for r, n in out.scheduled
            if r.num_computed_tokens + n == r.num_tokens}


def step(s: Scheduler, token_of=lambda r: 1):
    out = s.schedule()
    s.update(out, sample_all(out, token_of))
    return out


def run(s: Scheduler, max_steps: int = 1000) -> list:
    """Step until idle; return each step's [(request id, tokens)]."""
    steps = []
    while s.has_work:
        assert len(steps) < max_steps, "scheduler did not drain"
        steps.append([(r.request_id, n) for r, n in step(s).scheduled])
    return steps


def finish_order(s: Scheduler, requests: list[Request]) -> list[str]:
    order = []
    while s.has_work:
        step(s)
        order += [r.request_id for r in requests if r.finished and r.request_id not in order]
    return order


# ---------------------------------------------------------------- token budget and seats
def test_chunked_prefill_splits_a_long_prompt_within_the_budget():
    """A 20-token prompt under an 8-token budget runs as chunks 8, 8, 4; the next request joins only when
    budget is left over, and no step exceeds the budget."""
    s = make(max_num_batched_tokens=8)
    a, b = req("a", range(20), max_tokens=2), req("b", range(100, 103), max_tokens=2)
    s.add(a)
    s.add(b)
    steps = run(s)
    assert steps == [[("a", 8)], [("a", 8)], [("a", 4), ("b", 3)], [("a", 1), ("b", 1)]]
    assert a.finish_reason == b.finish_reason == "length"
    assert a.output_token_ids == [1, 1]


def test_budget_holds_with_many_requests():
    """With many requests of mixed lengths (and blocks to spare), every step schedules
    min(max_num_batched_tokens, tokens left to compute): never more than the budget, never budget left idle."""
    s = make(max_num_batched_tokens=7, num_blocks=200)
    for i in range(10):
        s.add(req(f"r{i}", range(i, i + 3 + 2 * i), max_tokens=3))
    while s.has_work:
        left = sum(r.num_tokens - r.num_computed_tokens for r in s.requests.values())
        assert step(s).num_batched_tokens == min(7, left)


def test_max_num_seqs_caps_running_requests():
    """No more than max_num_seqs requests run at once; the rest wait their turn."""
    s = make(max_num_seqs=2)
    reqs = [req(f"r{i}", range(3), max_tokens=3) for i in range(5)]
    for r in reqs:
        s.add(r)
    out = step(s)
    assert [r.request_id for r, _ in out.scheduled] == ["r0", "r1"]
    while s.has_work:
        assert len(step(s).scheduled) <= 2 and len(s.running) <= 2
    assert all(r.finish_reason == "length" for r in reqs)


# ---------------------------------------------------------------- order
def test_fcfs_order():
    """FCFS admits, batches and finishes requests in arrival order, ignoring priority."""
    s = make(max_num_seqs=1)
    reqs = [req(f"r{i}", range(3), priority=p) for i, p in enumerate([2, 0, 1, 0])]
    for r in reqs:
        s.add(r)
    assert finish_order(s, reqs) == ["r0", "r1", "r2", "r3"]

    s = make(max_num_seqs=4)
    for i in range(4):
        s.add(req(f"q{i}", range(3)))
    assert [r.request_id for r, _ in step(s).scheduled] == ["q0", "q1", "q2", "q3"]


def test_priority_order():
    """The priority policy runs lower `priority` first, arrival order breaking ties."""
    s = make(max_num_seqs=1, scheduling_policy="priority")
    reqs = [req(f"r{i}", range(3), priority=p) for i, p in enumerate([2, 0, 1, 0])]
    for r in reqs:
        s.add(r)
    assert finish_order(s, reqs) == ["r1", "r3", "r2", "r0"]

    s = make(scheduling_policy="priority")
    for i, p in enumerate([2, 0, 1, 0]):
        s.add(req(f"q{i}", range(3), priority=p))
    assert [r.request_id for r, _ in step(s).scheduled] == ["q1", "q3", "q2", "q0"]


# ---------------------------------------------------------------- preemption
def test_preemption_takes_the_latest_arrival_which_later_finishes():
    """When blocks run out, the latest-arrived running request is preempted: it frees its blocks, waits with
    num_computed_tokens == 0 and its output so far, restarts from scratch (no prefix cache) and finishes."""
    s = make(num_blocks=5, caching=False)  # 4 usable blocks of 4 tokens
    a, b = req("a", range(4), max_tokens=8), req("b", range(50, 54), max_tokens=8)
    s.add(a)
    s.add(b)
    preempted_at = None
    for i in range(100):
        out = s.schedule()
        if out.preempted:
            assert preempted_at is None
            preempted_at = i
            assert out.preempted == [b]
            assert b.status is Status.WAITING and b.num_computed_tokens == 0 and b in s.waiting
            assert b.request_id not in s.kv.tables
            assert [r.request_id for r, _ in out.scheduled] == ["a"]
            b_output = list(b.output_token_ids)
            assert b_output  # it had generated before being preempted
        elif preempted_at is not None and any(r is b for r, _ in out.scheduled) and b.num_computed_tokens == 0:
            (n,) = [n for r, n in out.scheduled if r is b]
            assert n == b.num_tokens == 4 + len(b_output)  # recomputes prompt and its own output
        s.update(out, sample_all(out))
        if not s.has_work:
            break
    assert preempted_at is not None
    assert a.finish_reason == b.finish_reason == "length"
    assert len(b.output_token_ids) == 8 and b.output_token_ids[:len(b_output)] == b_output
    assert b.num_preemptions == 1 and a.num_preemptions == 0
    assert s.stats().num_preemptions == 1
    assert s.kv.pool.num_free == 4


def test_priority_preempts_the_lowest_priority_running_request():
    """Under the priority policy the victim is the running request with the largest (priority, arrival)."""
    s = make(num_blocks=5, caching=False, scheduling_policy="priority")
    hi, lo = req("hi", range(4), max_tokens=8, priority=0), req("lo", range(50, 54), max_tokens=8, priority=5)
    s.add(lo)
    s.add(hi)
    victims = []
    while s.has_work:
        victims += [r.request_id for r in step(s).preempted]
    assert victims[:1] == ["lo"] and "hi" not in victims
    assert hi.finish_reason == lo.finish_reason == "length"


# ---------------------------------------------------------------- admission limits, duplicates, aborts
def test_waiting_queue_limit_raises_queue_full():
    """A full waiting queue rejects new requests with QueueFullError naming max_waiting_requests."""
    s = make(max_waiting_requests=2)
    s.add(req("a", range(3)))
    s.add(req("b", range(3)))
    with pytest.raises(QueueFullError, match="max_waiting_requests=2"):
        s.add(req("c", range(3)))
    assert "c" not in s.requests
    step(s)  # admits a and b: the queue has room again
    s.add(req("c", range(3)))
    with pytest.raises(QueueFullError):
        make(max_waiting_requests=0).add(req("x", range(3)))


def test_duplicate_request_id_is_rejected_until_it_finishes():
    """A live request id cannot be reused; once the request finishes it can."""
    s = make()
    s.add(req("a", range(3), max_tokens=1))
    with pytest.raises(ValueError, match="already in use"):
        s.add(req("a", range(5)))
    run(s)
    s.add(req("a", range(5)))


def test_abort_frees_all_blocks():
    """Aborting running (mid-prefill and decoding) and waiting requests returns every block to the pool."""
    s = make(FULL_SLIDING, num_blocks=40, max_num_batched_tokens=10, max_num_seqs=2)
    reqs = [req("dec", range(5), max_tokens=50), req("pre", range(20, 50)), req("wait", range(3))]
    for r in reqs:
        s.add(r)
    for _ in range(3):
        step(s)
    assert [r.status for r in reqs] == [Status.RUNNING, Status.RUNNING, Status.WAITING]
    assert s.kv.pool.num_free < 39
    for r in reqs:
        assert s.abort(r.request_id) is r
    assert all(r.finish_reason == "abort" for r in reqs)
    assert s.kv.pool.num_free == 39 and s.kv.tables == {} and not s.has_work
    assert s.abort("dec") is None and s.abort("nope") is None


def test_abort_while_the_step_runs():
    """A request aborted between schedule() and update() is skipped by update and holds no blocks."""
    s = make(num_blocks=10)
    a, b = req("a", range(6)), req("b", range(6))
    s.add(a)
    s.add(b)
    out = s.schedule()
    s.abort("a")
    changed = s.update(out, sample_all(out))
    assert changed == [b] and a.output_token_ids == [] and a.finish_reason == "abort"
    run(s)
    assert s.kv.pool.num_free == 9


def test_prefix_hit_through_the_scheduler():
    """A request arriving after an identical one finished reuses its block ids; stats count the hit tokens."""
    s = make(num_blocks=20)
    a = req("a", range(10), max_tokens=1)
    s.add(a)
    out = s.schedule()
    a_blocks = list(s.kv.block_tables(a)[0])
    s.update(out, sample_all(out))
    assert a.finished
    b = req("b", range(10), max_tokens=1)
    s.add(b)
    out = s.schedule()
    assert out.scheduled == [(b, 2)] and b.num_computed_tokens == 8
    assert s.kv.block_tables(b)[0][:2] == a_blocks[:2]
    s.update(out, sample_all(out))
    st_ = s.stats()
    assert (st_.prefix_cache_queries, st_.prefix_cache_hits) == (20, 8)
    assert b.num_cached_tokens == 8 and b.to_output().num_cached_tokens == 8


def test_abort_mid_prefill_leaves_only_computed_blocks_cached():
    """A request aborted after a chunk ending mid-block leaves only its computed full blocks in the prefix
    cache: a later identical prompt hits 4 tokens, not 8."""
    s = make(num_blocks=10, max_num_batched_tokens=6)
    s.add(req("a", range(12)))
    assert [(r.request_id, n) for r, n in step(s).scheduled] == [("a", 6)]
    s.abort("a")
    b = req("b", range(12))
    s.add(b)
    out = s.schedule()
    assert out.scheduled == [(b, 6)] and b.num_computed_tokens == 4


def test_scheduler_config_validation():
    """Bad limits and unknown policies are rejected when the config is made."""
    for bad in (dict(max_num_seqs=0), dict(max_num_batched_tokens=0), dict(max_waiting_requests=-1),
                dict(scheduling_policy="lifo")):
        with pytest.raises(ValueError):
            SchedulerConfig(**bad)


def test_request_the_engine_admits_can_always_run_alone():
    """A request that passes EngineCore's admission check (`blocks_for_sequence <= num_blocks - 1`) must be
    schedulable when it is alone. Window 8, block 4, 32-token prompt, max_tokens 1: the one 32-token prefill chunk
    holds 8 full + 8 sliding blocks before any can be released, so the check must count the chunk (it once counted
    only window/block_size + 1 sliding blocks, admitted the request into a 13-block pool, and the loop spun)."""
    needed = blocks_for_sequence(FULL_SLIDING, 33, max_chunk=2048)
    assert needed == 18
    s = make(FULL_SLIDING, num_blocks=needed + 1, max_num_batched_tokens=2048)
    r = req("a", range(32), max_tokens=1)
    s.add(r)
    for _ in range(20):
        if not s.has_work:
            break
        assert step(s).scheduled, "nothing scheduled with one request alone: the loop would never end"
    assert r.finish_reason == "length"


# ---------------------------------------------------------------- stateful property test
BASE = [(i * 7) % 11 + 10 for i in range(40)]  # shared prompt prefixes are slices of this
STOP = 3  # the fake model's token that ends requests asking for it


def fake_token(r: Request) -> int:
    """A deterministic "sampled" token in 1..5 (reproducible across processes, unlike str hashes)."""
    return (int(r.request_id[1:]) * 31 + r.num_tokens * 17) % 5 + 1


def prefix_keys(tokens: list[int]) -> list[int]:
    """keys[p] identifies tokens[:p + 1]: the content a KV slot at position p must hold."""
    return list(itertools.accumulate(tokens, lambda k, t: hash((k, t)), initial=0))[1:]


def blocks_for(n: int, bs: int) -> int:
    return -(-n // bs)


@st.composite
def configs(draw):
    bs = draw(st.sampled_from([1, 2, 4]))
    kind = draw(st.sampled_from(["full", "full+sliding", "sliding", "sliding+full", "full+2 sliding"]))
    w1, w2 = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    windows = {"full": (None,), "full+sliding": (None, w1), "sliding": (w1,), "sliding+full": (w1, None),
               "full+2 sliding": (None, w1, w2)}[kind]  # gpt-oss is full+sliding; the others test group order
    layout = KVCacheLayout(bs, windows, tuple((g, 0) for g in range(len(windows))), 1)
    num_blocks = draw(st.integers(len(windows) * 3 + 1, 16 * len(windows)))  # small: preemption happens
    config = SchedulerConfig(max_num_seqs=draw(st.integers(1, 4)), max_num_batched_tokens=draw(st.integers(1, 16)),
                             max_waiting_requests=draw(st.none() | st.integers(1, 6)),
                             scheduling_policy=draw(st.sampled_from(["fcfs", "priority"])))
    return layout, num_blocks, config, draw(st.booleans())


class SchedulerMachine(RuleBasedStateMachine):
    """Random arrivals, aborts (between and during steps) and steps on small pools, checked after every step:

    - block accounting: every block's ref_count equals its references from live tables, free blocks have
      ref_count 0 and no references, shared blocks are prefix-cache blocks, a hashed block in a table holds the
      tokens that request expects there, no block is in two groups or twice in one table;
    - simulated KV: each step writes a key for every computed position into its slot, then checks that every
      position the step's queries can see (all earlier ones, or the window) is in a non-null block holding the
      right key, so prefix hits and sliding-window release never lose a needed block;
    - sliding release: after allocation no sliding block lies fully out of the next query's window;
    - budget, seats, order (admissions are a prefix of the waiting queue), preemption victims, progress
      (a step with work schedules something), at least one token computed per admitted request;
    - at teardown the loop drains within a bound, every request finished or was aborted, all blocks are free.

    Requests are sized by EngineCore's admission rule, so "a step with work schedules something" also checks that
    rule: a request it admits can always run alone.
    """

    @initialize(cfg=configs())
    def setup(self, cfg):
        layout, num_blocks, config, caching = cfg
        self.layout, self.bs, self.config = layout, layout.block_size, config
        self.kv = KVCacheManager(layout, num_blocks, enable_caching=caching)
        self.s = Scheduler(config, self.kv)
        chunk = config.max_num_batched_tokens
        self.admits = lambda n: blocks_for_sequence(layout, n, chunk) <= num_blocks - 1  # the engine's rule
        self.requests: dict[str, Request] = {}
        self.ids = itertools.count()
        self.content: dict[int, dict[int, int]] = {}  # block id -> offset -> key written there
        self.steps = 0

    # ---- rules
    @rule(shared=st.integers(0, 40), suffix=st.lists(st.integers(20, 23), max_size=12),
          max_tokens=st.integers(1, 12), priority=st.integers(0, 2), stops=st.booleans())
    def add(self, shared, suffix, max_tokens, priority, stops):
        prompt = BASE[:shared] + suffix or [20]
        while not self.admits(len(prompt) + max_tokens):  # shrink to what EngineCore would admit
            if max_tokens > 1 and (max_tokens >= len(prompt) or len(prompt) == 1):
                max_tokens -= 1
            else:
                prompt = prompt[:-1]
        r = req(f"r{next(self.ids)}", prompt, max_tokens, priority, [STOP] if stops else None)
        limit = self.config.max_waiting_requests
        if limit is not None and len(self.s.waiting) >= limit:
            with pytest.raises(QueueFullError, match=f"max_waiting_requests={limit}"):
                self.s.add(r)
            return
        self.s.add(r)
        self.requests[r.request_id] = r
        if limit is None or len(self.s.waiting) < limit:
            with pytest.raises(ValueError, match="already in use"):
                self.s.add(req(r.request_id, [1]))

    @rule(pick=st.integers(0, 100), skip=st.integers(0, 3))
    def abort(self, pick, skip):
        if skip or not self.s.requests:  # abort only a quarter of the time, so most requests run to the end
            return
        live = sorted(self.s.requests)
        r = self.s.abort(live[pick % len(live)])
        assert r.finish_reason == "abort" and r.request_id not in self.kv.tables

    @rule(abort_pick=st.sampled_from([None] * 6 + [0, 1]))
    def step(self, abort_pick):
        self._step(abort_pick)

    @rule(n=st.integers(2, 8))
    def steps(self, n):
        for _ in range(n):
            self._step()

    def teardown(self):
        if not hasattr(self, "s"):
            return
        pending = [r for r in self.requests.values() if not r.finished]
        bound = sum(r.num_tokens + r.params.max_tokens for r in pending) * (len(pending) + 1) + 1
        for _ in range(bound):
            if not self.s.has_work:
                break
            self._step()
        assert not self.s.has_work, f"not drained within {bound} steps"
        for r in self.requests.values():
            assert r.finished and r.finish_reason in ("length", "stop", "abort")
            if r.finish_reason == "length":
                assert len(r.output_token_ids) == r.params.max_tokens
            if r.finish_reason == "stop":
                assert r.output_token_ids[-1] == STOP and r.params.stop_token_ids == [STOP]
        assert self.kv.pool.num_free == self.kv.pool.num_blocks - 1
        assert self.kv.tables == {} and self.kv.hashes == {} and self.kv.num_cached_blocks == {}  # no leaks
        assert self.kv.released == {}
        assert self.s.requests == {} and self.s.stats().num_preemptions == sum(
            r.num_preemptions for r in self.requests.values())

    # ---- one step of the fake engine, with the per-step checks
    def _step(self, abort_pick=None):
        s, cfg, bs = self.s, self.config, self.bs
        had_work = s.has_work
        waiting_before = list(s.waiting)
        status_before = {r.request_id: r.status for r in self.requests.values()}
        out = s.schedule()
        self.steps += 1

        # budget, seats, progress
        assert out.num_batched_tokens <= cfg.max_num_batched_tokens
        assert len(s.running) <= cfg.max_num_seqs and len(out.scheduled) <= cfg.max_num_seqs
        assert not had_work or out.scheduled, "work but nothing scheduled: deadlock"
        ids = [r.request_id for r, _ in out.scheduled]
        assert len(set(ids)) == len(ids)
        for r, n in out.scheduled:
            assert n >= 1 and r.num_computed_tokens + n <= r.num_tokens and r.status is Status.RUNNING

        # order: running requests first in key order, then admissions from the head of the waiting queue
        keys = [s._key(r) for r, _ in out.scheduled]
        was_running = [status_before[i] is Status.RUNNING for i in ids]
        assert was_running == sorted(was_running, reverse=True)
        old = [k for k, w in zip(keys, was_running) if w]
        assert old == sorted(old)
        admitted = [r for (r, _), w in zip(out.scheduled, was_running) if not w]
        assert admitted == waiting_before[:len(admitted)]
        for r in admitted:
            c = r.num_computed_tokens
            assert c % bs == 0 and c < r.num_tokens  # at least one token left to compute
            # without caching nothing is reused, except where no group needs earlier KV (only window-1 groups)
            assert c == 0 or self.kv.pool.enable_caching or all(w == 1 for w in self.layout.windows)

        # preemption: victims are the lowest-priority running requests, reset and blockless; no admissions
        if out.preempted:
            assert not admitted
        for v in out.preempted:
            assert v.status is Status.WAITING and v.num_computed_tokens == 0 and v in s.waiting
            assert v.request_id not in self.kv.tables and v.request_id not in ids
            assert all(s._key(r) < s._key(v) for r in s.running)

        # allocation shape and sliding release for what was just allocated
        for r, n in out.scheduled:
            c = r.num_computed_tokens
            for g, (w, table) in enumerate(zip(self.layout.windows, self.kv.block_tables(r))):
                assert len(table) == blocks_for(c + n, bs)
                lo = 0 if w is None else max(0, c - w + 1)
                for i, b in enumerate(table):
                    if b != NULL_BLOCK:
                        assert (i + 1) * bs - 1 >= lo, f"sliding block {b} at {i} is out of the window at {c}"
        self._check_blocks()

        # simulated KV: write this step's positions, then read everything its queries see
        keys_of = {r.request_id: prefix_keys(r.all_token_ids) for r, _ in out.scheduled}
        for r, n in out.scheduled:
            for table in self.kv.block_tables(r):
                for p in range(r.num_computed_tokens, r.num_computed_tokens + n):
                    b = table[p // bs]
                    assert b != NULL_BLOCK
                    self.content.setdefault(b, {})[p % bs] = keys_of[r.request_id][p]
        for r, n in out.scheduled:
            c = r.num_computed_tokens
            for w, table in zip(self.layout.windows, self.kv.block_tables(r)):
                for p in range(0 if w is None else max(0, c - w + 1), c + n):
                    b = table[p // bs]
                    assert b != NULL_BLOCK, f"{r.request_id}: position {p} visible but its block was released"
                    assert self.content.get(b, {}).get(p % bs) == keys_of[r.request_id][p], \
                        f"{r.request_id}: block {b} does not hold position {p}"

        if abort_pick is not None and ids:
            s.abort(ids[abort_pick % len(ids)])
        s.update(out, sample_all(out, fake_token))
        self._check_blocks()

    # ---- invariants
    def _check_blocks(self):
        pool, s, bs = self.kv.pool, self.s, self.bs
        refs: dict[int, int] = {}
        group_of: dict[int, int] = {}
        assert set(self.kv.tables) == {r.request_id for r in s.running}
        for rid, tables in self.kv.tables.items():
            r = s.requests[rid]
            expected_hashes = []
            for i in range(len(r.all_token_ids) // bs):
                expected_hashes.append(hash_block(expected_hashes[-1] if expected_hashes else b"",
                                                  r.all_token_ids[i * bs:(i + 1) * bs]))
            for g, table in enumerate(tables):
                real = [b for b in table if b != NULL_BLOCK]
                assert len(set(real)) == len(real), f"{rid} holds a block twice: {table}"
                if self.layout.windows[g] is None:
                    assert len(real) == len(table)
                for i, b in enumerate(table):
                    if b == NULL_BLOCK:
                        continue
                    refs[b] = refs.get(b, 0) + 1
                    assert group_of.setdefault(b, g) == g, f"block {b} is in two groups"
                    block = pool.blocks[b]
                    if block.block_hash is not None:
                        assert block.group == g and block.block_hash == expected_hashes[i], \
                            f"{rid}: block {b} at {i} is indexed for other tokens"
        for b in range(1, pool.num_blocks):
            block = pool.blocks[b]
            assert block.ref_count == refs.get(b, 0), f"block {b}: ref_count {block.ref_count}, {refs.get(b, 0)} refs"
            assert (b in pool.free) == (block.ref_count == 0)
            if refs.get(b, 0) > 1:
                assert block.block_hash is not None, f"block {b} shared but not a prefix-cache block"
        for (g, x), b in pool.cached.items():
            assert pool.blocks[b].block_hash == x and pool.blocks[b].group == g
        assert pool.blocks[NULL_BLOCK].ref_count == 1 and NULL_BLOCK not in pool.free

    @invariant()
    def queues_consistent(self):
        s = self.s
        if not hasattr(self, "s"):
            return
        assert not set(map(id, s.waiting)) & set(map(id, s.running))
        assert [s._key(r) for r in s.waiting] == sorted(s._key(r) for r in s.waiting)
        assert [s._key(r) for r in s.running] == sorted(s._key(r) for r in s.running)
        assert all(r.status is Status.WAITING and r.request_id not in self.kv.tables for r in s.waiting)
        for r in s.running:
            assert all(len(t) == blocks_for(r.num_computed_tokens, self.bs) for t in self.kv.block_tables(r))
        stats = s.stats()
        assert stats.prefix_cache_hits <= stats.prefix_cache_queries
        assert set(s.requests) == {r.request_id for r in s.waiting + s.running}


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.filter_too_much])
test_scheduler_state_machine = SchedulerMachine.TestCase
