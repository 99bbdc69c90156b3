"""Worker.prepare against the scheduler's own state, without a model: from the plain SchedulerOutput alone (table
changes, window releases, PENDING ids) every rank rebuilds exactly the block tables the KV cache manager holds,
and the step's tensors are the ones the requests imply. Random workloads with preemption, prefix hits, sliding
windows and aborts, under synchronous and async scheduling (one step in flight, its tokens not yet known)."""

import random

import numpy as np
import pytest

from engine.block_pool import NULL_BLOCK
from engine.config import EngineConfig, SchedulerConfig
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager, blocks_for_sequence
from engine.parallel.tp import RankLayout
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.scheduler_output import PENDING
from engine.worker import Worker

LAYOUTS = {  # name -> (layout, blocks in the pool)
    "full+sliding": (KVCacheLayout(4, (None, 6), ((0, 0), (1, 0)), 1), 12),
    "sliding+full+sliding": (KVCacheLayout(4, (3, None, 9), ((0, 0), (1, 0), (2, 0)), 1), 14),
}


def make_worker(layout: KVCacheLayout) -> Worker:
    worker = Worker(EngineConfig.from_kwargs(model="unused"), RankLayout(0, 1, 1, False), "cpu")
    worker.layout = layout  # what load() would read from the checkpoint
    return worker


def token_of(r: Request) -> int:
    """The fake model's next token for a request (deterministic)."""
    return (len(r.output_token_ids) * 7 + int(r.request_id[1:]) * 3) % 5 + 1


class Driver:
    """A scheduler, its KV cache manager and one worker, stepped with a fake model."""

    def __init__(self, layout: KVCacheLayout, num_blocks: int, async_scheduling: bool, seed: int):
        self.rng, self.layout, self.async_scheduling = random.Random(seed), layout, async_scheduling
        self.num_blocks = num_blocks
        self.kv = KVCacheManager(layout, self.num_blocks)
        self.s = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=8), self.kv)
        self.worker = make_worker(layout)
        self.in_flight = None  # (step, sampled tokens) under async scheduling
        self.ids = 0
        self.prefixes = [[self.rng.randrange(1, 9) for _ in range(12)] for _ in range(3)]

    def add(self) -> None:
        prompt = self.rng.choice(self.prefixes)[: self.rng.randint(1, 12)] + [self.rng.randrange(1, 9)]
        max_tokens = self.rng.randint(1, 9)
        if blocks_for_sequence(self.layout, len(prompt) + max_tokens, 8) > self.num_blocks - 1:
            return
        params = SamplingParams(max_tokens=max_tokens, stop_token_ids=[5] if self.rng.random() < 0.3 else None)
        self.s.add(Request(f"r{self.ids}", prompt, params, eos_token_ids=frozenset()))
        self.ids += 1

    def step(self) -> None:
        step = self.s.schedule()
        launched = None
        if step.scheduled:
            known = {rid: (r.all_token_ids, r.num_pending) for rid, r in self.s.requests.items()}
            self.check(step, self.worker.prepare([step.output]), known)
            if self.async_scheduling:
                self.s.advance(step)
            sampled = {r.request_id: (token_of(r), None) for r, _ in step.scheduled
                       if r.request_id in {x.request_id for x in step.output.requests if x.sample}}
            launched = step, sampled
        if not self.async_scheduling:
            if launched:
                self.s.update(*launched)
            return
        previous, self.in_flight = self.in_flight, launched
        if previous:
            self.s.update(*previous)

    def check(self, step, prepared, known) -> None:
        inputs, ids = prepared.inputs, prepared.inputs.input_ids.tolist()
        flat, pending_expected = [], []
        for (r, n), sr in zip(step.scheduled, step.output.requests, strict=True):
            assert sr.request_id == r.request_id and sr.start == r.num_computed_tokens and len(sr.token_ids) == n
            assert self.worker.tables[r.request_id] == self.kv.block_tables(r)  # the oracle: the manager's tables
            tokens, pending = known[r.request_id]
            expected = (tokens + [PENDING] * pending)[sr.start: sr.start + n]
            assert sr.token_ids == expected and sr.sample == (sr.start + n == len(tokens) + pending)
            pending_expected += [r.request_id] * expected.count(PENDING)
            flat += expected
        assert ids == flat and prepared.pending_from == pending_expected
        assert [ids[i] for i in prepared.pending_index.tolist()] == [PENDING] * len(pending_expected)
        assert not pending_expected or self.async_scheduling
        positions = [sr.start + i for sr in step.output.requests for i in range(len(sr.token_ids))]
        assert inputs.positions.tolist() == positions
        bs, rows = self.layout.block_size, np.repeat(np.arange(len(step.scheduled)),
                                                     [len(sr.token_ids) for sr in step.output.requests])
        for g, group in enumerate(inputs.groups):
            tables = [self.kv.block_tables(r)[g] for r, _ in step.scheduled]
            slots = [tables[row][p // bs] * bs + p % bs for row, p in zip(rows, positions)]
            assert group.slot_mapping.tolist() == slots and NULL_BLOCK not in [s // bs for s in slots]
            width = group.block_table.shape[1]
            assert group.block_table.tolist() == [t + [NULL_BLOCK] * (width - len(t)) for t in tables]
        assert set(self.worker.tables) <= set(self.s.requests) | set(self.s._finished)  # finished ones dropped


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_worker_tables_and_inputs_follow_the_scheduler(layout, async_scheduling, seed):
    d = Driver(*LAYOUTS[layout], async_scheduling, seed)
    for _ in range(80):
        for _ in range(d.rng.choice([0, 0, 1, 2])):
            d.add()
        if d.s.requests and d.rng.random() < 0.08:
            d.s.abort(d.rng.choice(sorted(d.s.requests)))
        d.step()
    while d.s.has_work or d.in_flight:
        d.step()
    assert d.s.num_preemptions > 0  # the pool is small enough to preempt
    assert d.kv.pool.num_free == d.num_blocks - 1
