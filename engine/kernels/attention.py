"""Paged attention for gpt-oss: learned sinks, GQA, optional sliding window, varlen prefill and decode in one kernel.

KV cache of one layer: kv_cache [2, num_blocks, block_size, KV, D], index 0 = keys, 1 = values. Token slot
s = block_id * block_size + offset. `write_kv` stores this step's keys and values; `paged_attention` then reads
them through a block table. Each sequence's queries are the last q_len positions of that sequence, so one launch
serves decode (q_len 1), chunked prefill and mixed batches.
"""

import math

import torch

from . import cpu_native
from ._triton import INTERPRET, bf16_dots, next_pow2, tl, triton
from .launch import Launch, multiprocessors, run

# ---------------------------------------------------------------------------------------------------- write_kv


def write_kv_ref(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """kv_cache [2, N, BS, KV, D]; k, v [T, KV, D]; slot_mapping [T] int64 (-1 = skip). Writes in place."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])  # [2, N * BS, KV, D]
    flat[0, slots] = k[keep].to(kv_cache.dtype)
    flat[1, slots] = v[keep].to(kv_cache.dtype)


def write_kv_cpu(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """write_kv_ref off Triton: contiguous k and v in a contiguous CPU cache's dtype go through the native copy (one
    call: cpu_native.write_kv) where it built."""
    if kv_cache.device.type == "cpu" and k.dtype == v.dtype == kv_cache.dtype and k.is_contiguous() and \
            v.is_contiguous() and kv_cache.is_contiguous():
        lib = cpu_native.library()
        if lib is not None:
            return cpu_native.write_kv(lib, kv_cache, k, v, slot_mapping)
    return write_kv_ref(kv_cache, k, v, slot_mapping)


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr,  # k, v [T, KV, D]; cache [2, N, BS, KV, D]; slot [T]
    ROW, cache_kv_stride,  # ROW = KV * D; cache_kv_stride = N * BS * KV * D
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        cols = tl.arange(0, BLOCK)
        mask = cols < ROW
        k = tl.load(k_ptr + token * ROW + cols, mask=mask)
        v = tl.load(v_ptr + token * ROW + cols, mask=mask)
        tl.store(cache_ptr + slot * ROW + cols, k.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(cache_ptr + cache_kv_stride + slot * ROW + cols, v.to(cache_ptr.dtype.element_ty), mask=mask)


def plan_write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> list[Launch]:
    """The launch of `write_kv`: one program per token copies its KV x D keys and values."""
    T, KV, D = k.shape
    if T == 0:
        return []
    assert kv_cache.is_contiguous()
    return [Launch(_write_kv_kernel, (T,), (k.contiguous(), v.contiguous(), kv_cache, slot_mapping, KV * D,
                                            kv_cache[0].numel()), dict(BLOCK=next_pow2(KV * D)))]


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Triton twin of `write_kv_ref`: one program per token copies its KV x D keys and values."""
    run(plan_write_kv(kv_cache, k, v, slot_mapping))


# ----------------------------------------------------------------------------------------------- attention ref


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """q_pos [Q], k_pos [N] -> [Q, N] bool: causal, and inside the window when there is one."""
    mask = k_pos[None, :] <= q_pos[:, None]
    if sliding_window is not None:
        mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
    return mask


def _gather_keys(kv_cache, block_table_row, k_pos):
    """Keys and values at positions k_pos [N] of one sequence  ->  ([N, KV, D], [N, KV, D])."""
    block_size = kv_cache.shape[2]
    slots = block_table_row[k_pos // block_size].long() * block_size + k_pos % block_size
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])
    return flat[0, slots], flat[1, slots]


def paged_attention_ref(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    sliding_window: int | None,
    scale: float,
) -> torch.Tensor:
    """q [T, Hq, D]; kv_cache [2, N, BS, KV, D]; block_table [B, max_blocks]; seq_lens [B]; query_start_loc [B+1];
    sinks [Hq]  ->  out [T, Hq, D] in q's dtype. Softmax in fp32 with the sink as an extra, dropped column.

    Reads only keys inside some query's window, so out-of-window block-table entries may point anywhere."""
    out = torch.empty_like(q)
    T, Hq, D = q.shape
    group = Hq // kv_cache.shape[3]
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        q_b = q[starts[b] : starts[b + 1]].float()  # [Q, Hq, D]
        if q_b.shape[0] == 0:
            continue
        q_pos = torch.arange(seq_len - q_b.shape[0], seq_len, device=q.device)
        first = 0 if sliding_window is None else max(0, seq_len - q_b.shape[0] - sliding_window + 1)
        k_pos = torch.arange(first, seq_len, device=q.device)  # keys inside some query's window
        k, v = _gather_keys(kv_cache, block_table[b], k_pos)
        k = k.float().repeat_interleave(group, dim=1)  # [N, Hq, D]
        v = v.float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,nhd->hqn", q_b, k) * scale
        scores = scores.masked_fill(~_visible(q_pos, k_pos, sliding_window), float("-inf"))
        sink = sinks.float()[:, None, None].expand(Hq, q_b.shape[0], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        out[starts[b] : starts[b + 1]] = torch.einsum("hqn,nhd->qhd", probs, v).to(q.dtype)
    return out


# keys a full layer's prefill chunk sees at most for `_attend_rows` (bf16, AVX512-BF16); flash attention beyond, whose
# tiles keep the keys in cache where each row re-reads them (whole prompts of a [64-head-dim, 16 / 4 heads] layer, Zen 4
# VM, 2 threads, 2026-12-03: 32-512 tokens 3.2x faster than flash, 512 2.3x, 1024 1.5x, 2048 0.8x; fp32 about even)
ROWS_MAX_KEYS = 1024


def paged_attention_cpu(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    sliding_window: int | None,
    scale: float,
) -> torch.Tensor:
    """The path used on CPU (same signature and math as the ref): the decode sequences (one query each) in one call of
    the native kernel (cpu_native.decode_attention: no padding, no Python per sequence) or, without it, in one call
    padded to the longest, through torch's CPU flash attention; the prefill chunks of a sliding-window layer, and in
    bf16 on AVX512-BF16 those of a full layer that see at most ROWS_MAX_KEYS keys, through the native kernel, a query
    per row (`_attend_rows`), the others through the same flash attention, one call per sequence (`_attend_each`); no
    [queries, keys] score matrix is ever made, so an 8k-token prefill needs no gigabytes of scores. The sink
    joins the softmax denominator through the logsumexp: out * sigmoid(lse - sink) = sum_n p_n v_n with
    p_n = exp(s_n) / (sum_m exp(s_m) + exp(sink))."""
    out = torch.empty_like(q)
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    lib = cpu_native.library() if q.device.type == "cpu" else None
    native = lib is not None and q.is_contiguous() and kv_cache.is_contiguous()
    if native and q.shape[0] == seq_lens.shape[0] and int(q_lens.min()) == 1:  # a decode step: one query each
        cpu_native.decode_attention(lib, out, q, kv_cache, block_table, seq_lens, query_start_loc[:-1], sinks,
                                    sliding_window, scale)
        return out
    rows_ok = native and (sliding_window is not None or q.dtype == kv_cache.dtype == torch.bfloat16
                          and lib.gptoss_mxfp4_isa() >= 3)  # where `_attend_rows` beats flash attention
    rows = q_lens > 1 if rows_ok else torch.zeros_like(q_lens, dtype=torch.bool)
    if sliding_window is None:
        rows &= seq_lens <= ROWS_MAX_KEYS
    for kind, which in (("decode", q_lens == 1), ("rows", rows), ("flash", (q_lens > 1) & ~rows)):
        seqs = which.nonzero().squeeze(-1)  # three kinds of sequence, each one batched call (flash: one a sequence)
        if not seqs.numel():
            continue
        if kind == "decode" and native:
            cpu_native.decode_attention(lib, out, q, kv_cache, block_table[seqs], seq_lens[seqs],
                                        query_start_loc[seqs], sinks, sliding_window, scale)
        elif kind == "decode":
            _attend_padded(out, q, kv_cache, block_table[seqs], seq_lens[seqs].long(), query_start_loc[seqs].long(),
                           q_lens[seqs].long(), sinks, sliding_window, scale)
        elif kind == "rows":
            _attend_rows(lib, out, q, kv_cache, block_table[seqs], seq_lens[seqs].long(),
                         query_start_loc[seqs].long(), q_lens[seqs].long(), sinks, sliding_window, scale)
        else:
            _attend_each(out, q, kv_cache, block_table[seqs], seq_lens[seqs].tolist(), query_start_loc[seqs].tolist(),
                         q_lens[seqs].tolist(), sinks, sliding_window, scale)
    return out


def _attend_rows(lib, out, q, kv_cache, block_table, seq_lens, q_starts, q_lens, sinks, sliding_window, scale):
    """Prefill chunks of a sliding-window layer (or short ones of a full layer) through the native one-query kernel:
    each query a row of its own over the window's keys up to its position (this step's keys are in the cache already: write_kv ran first). No score
    outside a window is computed (flash attention with a mask computes every [Q, N] score of a chunk: at a 16-token
    window and prompts of 32-512, 4-8x the work)."""
    seq_of_row = torch.repeat_interleave(torch.arange(q_lens.shape[0], device=q.device), q_lens)
    first_row = torch.cumsum(q_lens, 0) - q_lens  # [B] each sequence's first row among these rows
    offset = torch.arange(seq_of_row.shape[0], device=q.device) - first_row[seq_of_row]
    lens = (seq_lens - q_lens)[seq_of_row] + offset + 1  # each query sees the keys up to its own position
    cpu_native.decode_attention(lib, out, q, kv_cache, block_table[seq_of_row], lens, q_starts[seq_of_row] + offset,
                                sinks, sliding_window, scale)


def _attend_each(out, q, kv_cache, block_table, seq_lens, q_starts, q_lens, sinks, sliding_window, scale):
    """Writes the attention of prefill chunks into out's rows, one flash-attention call per sequence over the keys
    inside some query's window (no padding to the longest chunk of the step: a step of prompts of 32-512 tokens
    computed 1.4-2x the scores it needed that way). A chunk that starts a sequence and sees every earlier key is
    plain causal (no mask: the kernel skips the blocks above the diagonal); any other gets its [Q, N] mask."""
    KV, D = kv_cache.shape[3], kv_cache.shape[4]
    G = q.shape[1] // KV
    for b, (seq_len, start, n) in enumerate(zip(seq_lens, q_starts, q_lens)):
        q_first = seq_len - n
        k_first = 0 if sliding_window is None else max(0, q_first - sliding_window + 1)
        k_pos = torch.arange(k_first, seq_len, device=q.device)
        k, v = (t.to(q.dtype).transpose(0, 1).repeat_interleave(G, dim=0)[None]  # [1, Hq, N, D]
                for t in _gather_keys(kv_cache, block_table[b], k_pos))
        qb = q[start : start + n].transpose(0, 1)[None]  # [1, Hq, Q, D]
        if q_first == 0 and (sliding_window is None or seq_len <= sliding_window):
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qb, k, v, is_causal=True, scale=scale)
        else:
            q_pos = torch.arange(q_first, seq_len, device=q.device)
            mask = torch.zeros(1, 1, n, k_pos.shape[0], dtype=q.dtype, device=q.device)
            mask.masked_fill_(~_visible(q_pos, k_pos, sliding_window), float("-inf"))
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qb, k, v, attn_mask=mask, scale=scale)
        keep = torch.sigmoid(lse[0] - sinks.float()[:, None])  # [Hq, Q] the sink's share taken out
        out[start : start + n] = (o[0].float() * keep[..., None]).transpose(0, 1).to(out.dtype)


def _attend_padded(out, q, kv_cache, block_table, seq_lens, q_starts, q_lens, sinks, sliding_window, scale):
    """Writes the attention of B sequences' queries into out's rows. Shapes: B sequences, Q = longest query count,
    N = widest key range (the keys inside some query's window), Hq = KV * G heads, D head dim."""
    B, Q = q_lens.shape[0], int(q_lens.max())
    KV, G, D, block_size = kv_cache.shape[3], q.shape[1] // kv_cache.shape[3], q.shape[2], kv_cache.shape[2]
    q_first = seq_lens - q_lens  # [B] position of each sequence's first query
    k_first = torch.zeros_like(q_first) if sliding_window is None else (q_first - sliding_window + 1).clamp_min(0)
    N = int((seq_lens - k_first).max())
    k_pos = k_first[:, None] + torch.arange(N, device=q.device)  # [B, N]
    k_ok = k_pos < seq_lens[:, None]
    k_pos = torch.where(k_ok, k_pos, 0)
    slots = block_table.long().gather(1, k_pos // block_size) * block_size + k_pos % block_size
    flat = kv_cache.view(2, -1, KV, D)
    k, v = (flat[i, slots].to(q.dtype).transpose(1, 2) for i in (0, 1))  # [B, KV, N, D]
    q_idx = torch.arange(Q, device=q.device)
    q_ok = q_idx < q_lens[:, None]  # [B, Q]
    rows = torch.where(q_ok, q_starts[:, None] + q_idx, 0)  # [B, Q] rows of q (padding: row 0, dropped)
    q_pos = q_first[:, None] + q_idx  # [B, Q]
    visible = k_ok[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])  # [B, Q, N]
    if sliding_window is not None:
        visible &= k_pos[:, None, :] > q_pos[:, :, None] - sliding_window
    visible |= ~q_ok[:, :, None]  # padding queries see everything (no all-masked rows); their output is dropped
    if Q == 1:  # decode: each KV head's G query heads as G rows, so k and v stay [B, KV, N, D]
        qb = q[rows[:, 0]].view(B, KV, G, D)
        mask = torch.zeros(B, 1, 1, N, dtype=q.dtype, device=q.device).masked_fill(~visible[:, None], float("-inf"))
    else:  # prefill: k and v repeated per query head, the [Q, N] mask shared by the heads
        qb = q[rows].transpose(1, 2)  # [B, Hq, Q, D]
        k, v = (t.repeat_interleave(G, dim=1) for t in (k, v))
        mask = torch.zeros(B, 1, Q, N, dtype=q.dtype, device=q.device).masked_fill(~visible[:, None], float("-inf"))
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qb, k, v, attn_mask=mask, scale=scale)
    o, lse = o.reshape(B, -1, Q, D), lse.reshape(B, -1, Q)  # [B, Hq, Q, D], [B, Hq, Q]
    keep = torch.sigmoid(lse - sinks.float()[None, :, None])  # [B, Hq, Q] the sink's share taken out
    o = (o.float() * keep[..., None]).transpose(1, 2)  # [B, Q, Hq, D]
    out[rows[q_ok]] = o[q_ok].to(out.dtype)


# -------------------------------------------------------------------------------------------- attention kernel


@triton.jit
def _find_sequence(qsl_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    """Largest b with query_start_loc[b] // BLOCK_Q + b <= tile: sequence b owns that many tiles at most."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(qsl_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    q_ptr, cache_ptr, out_ptr,  # q, out [T, HQ, D]; cache [2, N, BS, KV, D]
    m_part_ptr, l_part_ptr, acc_part_ptr,  # split-KV partials: [T, HQ, S], [T, HQ, S], [T, HQ, S, D] fp32
    block_table_ptr, seq_lens_ptr, qsl_ptr, sinks_ptr,  # [B, max_blocks], [B], [B + 1], [HQ]
    num_seqs, bt_stride, cache_kv_stride, scale_log2,  # scale_log2 = scale * log2(e): softmax runs in base 2
    HQ: tl.constexpr, KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    WINDOW: tl.constexpr,  # 0 = full causal
    NUM_SPLITS: tl.constexpr,  # 1: write out; more: each split writes partials for _merge_splits_kernel
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16 (tl.dot's minimum)
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, DOT_BF16: tl.constexpr,
):
    # One program: BLOCK_Q consecutive queries of one sequence x the G query heads of KV head `kvh`, flattened to
    # BLOCK_M rows (row r = query r // G, head kvh * G + r % G), against that sequence's visible keys (or one
    # of NUM_SPLITS slices of them).
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    b = _find_sequence(qsl_ptr, num_seqs, tile, BLOCK_Q)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    q_tile = tile - (q_start // BLOCK_Q + b)
    if q_tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    context = seq_len - q_len  # position of the sequence's first query

    rows = tl.arange(0, BLOCK_M)
    qi = q_tile * BLOCK_Q + rows // G  # query index within the sequence, [BLOCK_M]
    head = kvh * G + rows % G
    row_ok = (rows // G < BLOCK_Q) & (qi < q_len)
    pos = context + qi
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < D
    token = (q_start + qi).to(tl.int64)
    q_off = token[:, None] * HQ * D + head[:, None] * D + dims[None, :]
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + q_off, mask=q_mask, other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_D]

    # Online softmax in base 2, started from the sink: m = s_h, l = exp(s_h - m) = 1, acc = 0. Splits start
    # from l = 0 (the merge adds the sink's mass once); m = s_h keeps an empty split finite.
    m_i = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NUM_SPLITS == 1:
        l_i += 1.0
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Keys any row of this tile can see: [key_lo, key_hi). Nothing outside is loaded (null blocks stay unread).
    key_hi = context + tl.minimum(q_tile * BLOCK_Q + BLOCK_Q, q_len)
    key_lo = 0
    if WINDOW > 0:
        key_lo = tl.maximum(context + q_tile * BLOCK_Q - WINDOW + 1, 0)
    first = key_lo // BLOCK_N * BLOCK_N
    if NUM_SPLITS > 1:  # whole BLOCK_N tiles per split
        per_split = tl.cdiv(tl.cdiv(key_hi - first, NUM_SPLITS), BLOCK_N) * BLOCK_N
        first += split * per_split
        key_lo = tl.maximum(key_lo, first)
        key_hi = tl.minimum(key_hi, first + per_split)
    bt_row = block_table_ptr + b.to(tl.int64) * bt_stride
    for start in range(first, key_hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)  # key positions
        k_ok = (j >= key_lo) & (j < key_hi)
        block = tl.load(bt_row + j // BS, mask=k_ok, other=0).to(tl.int64)
        kv_off = block * BS * KV * D + (j % BS) * KV * D + kvh * D  # [BLOCK_N]
        k_mask = d_ok[:, None] & k_ok[None, :]
        k = tl.load(cache_ptr + kv_off[None, :] + dims[:, None], mask=k_mask, other=0.0)  # [BLOCK_D, BLOCK_N]
        v_mask = k_ok[:, None] & d_ok[None, :]
        v = tl.load(cache_ptr + cache_kv_stride + kv_off[:, None] + dims[None, :], mask=v_mask, other=0.0)
        if DOT_BF16:
            s = tl.dot(q.to(tl.bfloat16), k.to(tl.bfloat16))
        else:
            s = tl.dot(q, k.to(tl.float32), input_precision="ieee")
        visible = k_ok[None, :] & (j[None, :] <= pos[:, None])
        if WINDOW > 0:
            visible &= j[None, :] > pos[:, None] - WINDOW
        s = tl.where(visible, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DOT_BF16:
            pv = tl.dot(p.to(tl.bfloat16), v.to(tl.bfloat16))
        else:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    if NUM_SPLITS == 1:
        tl.store(out_ptr + q_off, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=q_mask)
    else:
        part = (token * HQ + head) * NUM_SPLITS + split  # [BLOCK_M]
        tl.store(m_part_ptr + part, m_i, mask=row_ok)
        tl.store(l_part_ptr + part, l_i, mask=row_ok)
        tl.store(acc_part_ptr + part[:, None] * D + dims[None, :], acc, mask=q_mask)


@triton.jit
def _merge_splits_kernel(
    m_part_ptr, l_part_ptr, acc_part_ptr, sinks_ptr, out_ptr,  # partials as above; sinks [HQ]; out [T, HQ, D]
    HQ, D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per (token, head): out = sum_s 2^(m_s - m) acc_s / (sum_s 2^(m_s - m) l_s + 2^(sink - m)).
    row = tl.program_id(0).to(tl.int64)  # token * HQ + head
    splits = tl.arange(0, BLOCK_S)
    s_ok = splits < NUM_SPLITS
    dims = tl.arange(0, BLOCK_D)
    m = tl.load(m_part_ptr + row * NUM_SPLITS + splits, mask=s_ok, other=float("-inf"))
    l = tl.load(l_part_ptr + row * NUM_SPLITS + splits, mask=s_ok, other=0.0)
    acc_off = (row * NUM_SPLITS + splits)[:, None] * D + dims[None, :]
    acc = tl.load(acc_part_ptr + acc_off, mask=s_ok[:, None] & (dims[None, :] < D), other=0.0)
    sink = tl.load(sinks_ptr + row % HQ).to(tl.float32) * 1.4426950408889634
    m_max = tl.maximum(tl.max(m, axis=0), sink)
    w = tl.exp2(m - m_max)
    denominator = tl.sum(w * l, axis=0) + tl.exp2(sink - m_max)
    out = tl.sum(acc * w[:, None], axis=0) / denominator
    tl.store(out_ptr + row * D + dims, out.to(out_ptr.dtype.element_ty), mask=dims < D)


def _tiles(num_tokens: int, num_seqs: int, group: int, dot_bf16: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_Q, BLOCK_N, num_warps). Pure decode packs 16 rows (tl.dot's minimum) on 4 warps; prefill packs
    64 rows on 8 warps against 64 keys at a time, 32 with fp32 dots (FMA, not tensor cores: more registers per key).
    The interpreter takes 16 keys: fast tests that cross key-tile edges."""
    decode = num_tokens == num_seqs
    block_m = max(16 if decode else 64, next_pow2(group))
    block_n = 16 if INTERPRET else 64 if decode or dot_bf16 else 32
    return block_m, block_m // group, block_n, 4 if decode else 8


def _num_splits(programs: int, decode_only: bool, max_keys: int, block_n: int, sms: int | None) -> int:
    """Split the keys (flash-decoding) when a decode batch has too few programs to fill the GPU: aim at two programs
    per SM, at most 64 splits, and no more than the BLOCK_N tiles of the most keys a sequence can see (its window, or
    the block table's width)."""
    if sms is None or not decode_only or programs >= sms:
        return 1
    return max(1, min(64, -(-2 * sms // programs), -(-max_keys // block_n)))


def plan_paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    sliding_window: int | None,
    scale: float,
    num_splits: int | None = None,
    sms: int | None = None,
) -> tuple[torch.Tensor, list[Launch]]:
    """out of `paged_attention` and the launches that fill it. Key splits: `num_splits` if given (tests force them
    on CPU), else as many as fill `sms` multiprocessors (default: q's device; none off CUDA).

    Grid: (T // BLOCK_Q + B, KV, splits). Sequence b owns tiles [qsl[b] // BLOCK_Q + b, qsl[b + 1] // BLOCK_Q + b
    + 1), at least cdiv(q_len_b, BLOCK_Q) of them; spare tiles exit at once. Split keys: each split writes partial
    softmax state, a second launch merges them with the sink."""
    T, HQ, D = q.shape
    _, _, BS, KV, _ = kv_cache.shape
    B = seq_lens.shape[0]
    assert HQ % KV == 0 and kv_cache.is_contiguous()
    out = torch.empty_like(q)
    if T == 0:
        return out, []
    dot_bf16 = bf16_dots(q.dtype)
    block_m, block_q, block_n, num_warps = _tiles(T, B, HQ // KV, dot_bf16)
    if num_splits is None:
        sms = multiprocessors(q.device) if sms is None else sms
        max_keys = sliding_window or block_table.shape[1] * BS
        num_splits = _num_splits((T // block_q + B) * KV, T == B, max_keys, block_n, sms)
    m_part = l_part = acc_part = out  # unused unless split
    if num_splits > 1:
        m_part, l_part = (torch.empty(T, HQ, num_splits, dtype=torch.float32, device=q.device) for _ in range(2))
        acc_part = torch.empty(T, HQ, num_splits, D, dtype=torch.float32, device=q.device)
    launches = [Launch(_paged_attention_kernel, (T // block_q + B, KV, num_splits), (
        q.contiguous(), kv_cache, out, m_part, l_part, acc_part, block_table, seq_lens, query_start_loc, sinks,
        B, block_table.stride(0), kv_cache[0].numel(), scale * math.log2(math.e),
    ), dict(
        HQ=HQ, KV=KV, G=HQ // KV, D=D, BS=BS, WINDOW=sliding_window or 0, NUM_SPLITS=num_splits,
        BLOCK_D=max(16, next_pow2(D)), BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=block_n,
        DOT_BF16=dot_bf16, num_warps=num_warps,
    ))]
    if num_splits > 1:
        launches.append(Launch(_merge_splits_kernel, (T * HQ,), (m_part, l_part, acc_part, sinks, out, HQ), dict(
            D=D, NUM_SPLITS=num_splits, BLOCK_S=next_pow2(num_splits), BLOCK_D=next_pow2(D))))
    return out, launches


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    sliding_window: int | None,
    scale: float,
) -> torch.Tensor:
    """Triton twin of `paged_attention_ref`; no host sync (grid from shapes only), so it can be graph-captured.
    Small decode batches also split the keys of each sequence across programs (see `plan_paged_attention`)."""
    out, launches = plan_paged_attention(q, kv_cache, block_table, seq_lens, query_start_loc, sinks, sliding_window,
                                         scale)
    run(launches)
    return out


def _paged_attention(q, kv_cache, block_table, seq_lens, query_start_loc, sinks, sliding_window, scale, num_splits):
    """`paged_attention` with an explicit number of key splits (tests force splits on CPU)."""
    out, launches = plan_paged_attention(q, kv_cache, block_table, seq_lens, query_start_loc, sinks, sliding_window,
                                         scale, num_splits=num_splits)
    run(launches)
    return out
