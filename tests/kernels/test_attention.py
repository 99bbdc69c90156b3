"""write_kv and paged_attention against their refs, and paged_attention_ref against dense attention.

Unwritten cache slots and the null block 0 hold NaN, so reading anything outside the visible keys (the tail of a
partly filled block, a block outside every query's window) turns the output into NaN and fails the test.
"""

import math

import pytest
import torch

from engine.kernels.attention import _paged_attention, paged_attention, paged_attention_ref, write_kv, write_kv_ref

from ._util import DEVICE, DTYPES, assert_close, triton_path


class Batch:
    """A paged batch: sequence b has seq_lens[b] cached tokens, of which the last q_lens[b] are queries."""

    def __init__(self, seq_lens, q_lens, HQ, KV, D, block_size, window, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        blocks = [-(-s // block_size) for s in seq_lens]
        self.cache = torch.full((2, 1 + sum(blocks), block_size, KV, D), float("nan"), dtype=dtype)
        self.block_table = torch.zeros(len(seq_lens), max(blocks) + 1, dtype=torch.int32)  # spare column of 0s
        free = (torch.randperm(sum(blocks), generator=g) + 1).tolist()  # block 0 is the null block
        self.keys, self.values = [], []  # contiguous [seq_len, KV, D] per sequence, for the dense oracle
        for b, (seq_len, q_len) in enumerate(zip(seq_lens, q_lens)):
            ids = [free.pop() for _ in range(blocks[b])]
            self.block_table[b, : blocks[b]] = torch.tensor(ids, dtype=torch.int32)
            k, v = (torch.randn(seq_len, KV, D, generator=g).to(dtype) for _ in range(2))
            slots = torch.tensor([ids[p // block_size] * block_size + p % block_size for p in range(seq_len)])
            write_kv_ref(self.cache, k, v, slots)
            self.keys.append(k)
            self.values.append(v)
            if window is not None:  # blocks before every query's window go back to the null block, as the engine does
                first_visible = max(0, seq_len - q_len - window + 1)
                self.block_table[b, : first_visible // block_size] = 0
        self.q = torch.randn(sum(q_lens), HQ, D, generator=g).to(dtype)
        self.sinks = torch.randn(HQ, generator=g)
        self.seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
        self.query_start_loc = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        self.window, self.scale = window, 1 / math.sqrt(D)

    def args(self, device=DEVICE):
        tensors = (self.q, self.cache, self.block_table, self.seq_lens, self.query_start_loc, self.sinks)
        return (*(t.to(device) for t in tensors), self.window, self.scale)


W = 8  # sliding window of the tests (gpt-oss: 128); queries at W-1, W, W+1 and further, across blocks of 4
CASES = {
    # name: (seq_lens, q_lens, HQ, KV, D, block_size, window)
    "decode-gqa8-full": ([1, 5, 17, 33], [1, 1, 1, 1], 16, 2, 32, 4, None),
    "decode-window-edges": ([W, W + 1, W + 2, 2 * W + 3], [1, 1, 1, 1], 16, 2, 32, 4, W),
    "prefill-gqa2-window": ([23], [23], 4, 2, 32, 4, W),
    "prefill-gqa1-full-bs3": ([19], [19], 4, 4, 16, 3, None),
    "chunked-prefill-window": ([30], [11], 8, 1, 32, 4, 5),
    "mixed-gqa1-window": ([9, 1, 26, 14], [9, 1, 3, 1], 2, 2, 64, 16, W),
    "mixed-gqa8-full": ([9, 1, 26, 14], [9, 1, 3, 1], 16, 2, 32, 16, None),
    "mixed-gqa3-window": ([40, 7], [2, 7], 6, 2, 32, 8, 6),
    "mqa-head-dim-8": ([12, 3], [4, 3], 8, 1, 8, 4, 5),  # D below tl.dot's 16 and not a power of two below
    "head-dim-24": ([10], [10], 2, 1, 24, 4, None),
}


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_paged_attention_matches_ref(case, dtype):
    batch = Batch(*CASES[case], dtype=dtype)
    out = paged_attention(*batch.args())
    expected = paged_attention_ref(*batch.args())
    assert not expected.isnan().any()
    assert_close(out, expected, fp32_tol=2e-5)


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [2, 5, 64])  # 64: the most a decode plan makes
@pytest.mark.parametrize("case", ["decode-gqa8-full", "decode-window-edges", "mixed-gqa3-window", "mqa-head-dim-8"])
def test_split_kv_matches_ref(case, num_splits, dtype):
    """Flash-decoding path (keys split across programs, partial softmaxes merged with the sink), forced on CPU."""
    batch = Batch(*CASES[case], dtype=dtype)
    out = _paged_attention(*batch.args(), num_splits=num_splits)
    assert_close(out, paged_attention_ref(*batch.args()), fp32_tol=2e-5)


def _dense_attention(batch, seq_lens, q_lens, window):
    """Per sequence: contiguous keys, an explicit sink column in the softmax, then the column dropped."""
    outs, q_start = [], 0
    for b, (seq_len, q_len) in enumerate(zip(seq_lens, q_lens)):
        q = batch.q[q_start : q_start + q_len].double()  # [Q, HQ, D]
        q_start += q_len
        group = q.shape[1] // batch.keys[b].shape[1]
        k = batch.keys[b].double().repeat_interleave(group, 1)  # [S, HQ, D]
        v = batch.values[b].double().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,shd->hqs", q, k) * batch.scale
        i = torch.arange(seq_len - q_len, seq_len)[:, None]
        j = torch.arange(seq_len)[None, :]
        visible = (j <= i) & ((j > i - window) if window is not None else True)
        scores = scores.masked_fill(~visible, float("-inf"))
        sink = batch.sinks.double()[:, None, None].expand(-1, q_len, 1)
        probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
        outs.append(torch.einsum("hqs,shd->qhd", probs, v))
    return torch.cat(outs)


@pytest.mark.parametrize("case", list(CASES))
def test_paged_attention_ref_matches_dense(case):
    seq_lens, q_lens, *_, window = CASES[case]
    batch = Batch(*CASES[case], dtype=torch.float32)
    out = paged_attention_ref(*batch.args("cpu"))
    torch.testing.assert_close(out.double(), _dense_attention(batch, seq_lens, q_lens, window), atol=1e-5, rtol=1e-5)


def test_sink_only_softmax():
    """One key: out = v * e^a / (e^a + e^s), i.e. the sink takes its share of the mass and gives no value."""
    batch = Batch([1], [1], 1, 1, 16, 4, None, torch.float32)
    out = paged_attention_ref(*batch.args("cpu"))
    a = (batch.q[0, 0] @ batch.keys[0][0, 0]) * batch.scale
    weight = torch.sigmoid(a - batch.sinks[0])
    torch.testing.assert_close(out[0, 0], weight * batch.values[0][0, 0])


@triton_path
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_matches_ref(dtype):
    g = torch.Generator().manual_seed(1)
    k, v = (torch.randn(7, 3, 16, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    slots = torch.tensor([5, -1, 0, 11, 2, -1, 8]).to(DEVICE)
    cache = torch.zeros(2, 3, 4, 3, 16, dtype=dtype, device=DEVICE)
    cache_ref = cache.clone()
    write_kv(cache, k, v, slots)
    write_kv_ref(cache_ref, k, v, slots)
    torch.testing.assert_close(cache, cache_ref, atol=0, rtol=0)
    assert cache_ref.view(2, 12, 3, 16)[0, 11].equal(k[3]) and cache_ref.view(2, 12, 3, 16)[1, 0].equal(v[2])
