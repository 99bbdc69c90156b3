"""The CPU attention path (decode rows through the native kernel, or batched through torch's flash attention without
it; prefill chunks batched) equals the ref on decode-only and mixed batches."""

import pytest
import torch

from engine.kernels import cpu_native
from engine.kernels.attention import paged_attention_cpu, paged_attention_ref


@pytest.fixture(autouse=True, params=["native", "torch"])
def path(request, monkeypatch):
    """Each test runs with the native decode kernel and with torch alone."""
    if request.param == "native":
        assert cpu_native.library() is not None, "the native kernels did not build (is there a C compiler?)"
    else:
        monkeypatch.setattr(cpu_native, "library", lambda: None)
    return request.param


def make_case(q_lens, seq_lens, window, kv=2, hq=8, d=16, block_size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = 1 + sum(blocks_per_seq)
    cache = torch.randn(2, num_blocks, block_size, kv, d, generator=gen)
    table = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    ids = torch.randperm(num_blocks - 1, generator=gen) + 1
    used = 0
    for b, n in enumerate(blocks_per_seq):
        table[b, :n] = ids[used : used + n]
        used += n
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(int(qsl[-1]), hq, d, generator=gen)
    sinks = torch.randn(hq, generator=gen)
    return q, cache, table, torch.tensor(seq_lens, dtype=torch.int32), qsl, sinks, window, 0.25


@pytest.mark.parametrize("window", [None, 1, 5, 8])
@pytest.mark.parametrize("q_lens, seq_lens", [([1], [1]), ([1] * 5, [3, 9, 17, 4, 30]), ([1, 6, 1], [12, 6, 40]),
                                               ([3, 1, 0, 1, 5, 1], [3, 9, 4, 17, 20, 30]), ([7, 2], [7, 11])])
def test_cpu_path_equals_ref(q_lens, seq_lens, window):
    args = make_case(q_lens, seq_lens, window)
    torch.testing.assert_close(paged_attention_cpu(*args), paged_attention_ref(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv, hq", [(1, 8), (8, 8), (2, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_equals_ref_across_head_ratios_and_dtypes(kv, hq, dtype):
    """MQA, MHA and GQA; bf16 q and cache (the ref computes in fp32, the CPU path in bf16 with fp32 softmax)."""
    q, cache, *rest = make_case([1, 6, 1, 12], [12, 6, 40, 30], 8, kv=kv, hq=hq)
    args = (q.to(dtype), cache.to(dtype), *rest)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(paged_attention_cpu(*args).float(), paged_attention_ref(*args).float(), **tol)


def test_long_sequences_many_threads():
    """Sequences longer than the window and the scratch buffer's first size, a batch split between threads."""
    args = make_case([1] * 9, [700, 3, 129, 1000, 64, 65, 1, 300, 513], 128, kv=8, hq=64, d=64, block_size=16)
    torch.testing.assert_close(paged_attention_cpu(*args), paged_attention_ref(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv, hq", [(4, 16), (8, 64), (2, 6)])  # 4 and 8 query heads a KV head (the AVX512-BF16 path)
@pytest.mark.parametrize("window", [None, 128])
def test_bf16_head_dim_64_decode(kv, hq, window, path):
    """A bf16 cache with head_dim 64 (gpt-oss's): on AVX512-BF16, 16 keys at a time through vdpbf16ps and 4 heads'
    sums in registers (keys past a multiple of 16, windows, a batch split between threads); the ref's result to bf16's
    precision, and not the AVX-512 level's bits (the AVX2 path, which scales q before the dot product, the ref and
    this path the score after: with a sharp softmax and a scale that is no power of two, some outputs differ: that path
    ran)."""
    q, cache, *rest = make_case([1] * 8, [1, 15, 16, 17, 200, 700, 33, 129], window, kv=kv, hq=hq, d=64,
                                block_size=16)
    args = ((q * 8).bfloat16(), cache.bfloat16(), *rest[:-1], 0.3)
    got, ref = paged_attention_cpu(*args).float(), paged_attention_ref(*args).float()
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=2e-3)
    lib = cpu_native.library()
    if path == "native" and lib.gptoss_mxfp4_isa() >= 3 and (hq // kv) % 4 == 0:
        lib.gptoss_mxfp4_set_isa(2)
        try:
            generic = paged_attention_cpu(*args).float()
        finally:
            lib.gptoss_mxfp4_set_isa(-1)
        torch.testing.assert_close(generic, ref, rtol=1e-2, atol=2e-3)
        assert not torch.equal(got, generic)  # the generic kernel's error is larger, too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [None, 128])
def test_avx2_head_dim_64(dtype, window, path):
    """head_dim 64 with 4 and 8 query heads a KV head on the AVX2 level: the keys 16 at a time in a transposed panel
    (all the heads' scores by tpanel_tokens), softmax_sink8, 4 heads x 16 dims of the values in registers; the ref's
    result as the generic kernel's (the scalar level), with the keys' tail past 16, windows, and prefill-sized
    decode batches split between threads."""
    lib = cpu_native.library()
    if path != "native" or lib.gptoss_mxfp4_set_isa(1) < 0:
        pytest.skip("the AVX2 level of the native kernel")
    lib.gptoss_mxfp4_set_isa(-1)
    for kv, hq in ((4, 16), (2, 16)):
        q, cache, *rest = make_case([1] * 8, [1, 15, 16, 17, 200, 700, 33, 129], window, kv=kv, hq=hq, d=64,
                                    block_size=16)
        args = (q.to(dtype), cache.to(dtype), *rest)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-3)
        got = {}
        for level in (1, 0):
            lib.gptoss_mxfp4_set_isa(level)
            try:
                got[level] = paged_attention_cpu(*args).float()
            finally:
                lib.gptoss_mxfp4_set_isa(-1)
        ref = paged_attention_ref(*args).float()
        torch.testing.assert_close(got[1], ref, **tol)
        torch.testing.assert_close(got[0], ref, **tol)
        if dtype == torch.float32:  # the AVX2 path ran (its sums in another order; bf16 outputs may round alike)
            assert not torch.equal(got[1], got[0])


def test_bf16_full_layer_prefill_rows_and_flash(path, monkeypatch):
    """bf16 prefill chunks of a full layer with head_dim 64: on AVX512-BF16 those that see at most ROWS_MAX_KEYS keys
    a query per row through the native kernel (`_attend_rows`), a longer one through flash attention (chunks that start
    a sequence, chunks in the middle of one, decode rows among them); the ref's result to bf16's precision."""
    from engine.kernels import attention

    flashed = []
    each = attention._attend_each
    monkeypatch.setattr(attention, "_attend_each", lambda out, q, c, t, seq_lens, *a: (
        flashed.extend(seq_lens), each(out, q, c, t, seq_lens, *a)))
    long = attention.ROWS_MAX_KEYS + 40
    q, cache, *rest = make_case([20, 1, 30, 50, 7], [20, 90, 300, long, 7], None, kv=4, hq=16, d=64, block_size=16)
    args = ((q * 8).bfloat16(), cache.bfloat16(), *rest[:-1], 0.3)
    torch.testing.assert_close(paged_attention_cpu(*args).float(), paged_attention_ref(*args).float(), rtol=1e-2,
                               atol=2e-3)
    native = path == "native" and cpu_native.library().gptoss_mxfp4_isa() >= 3
    assert flashed == ([long] if native else [20, 300, long, 7])
