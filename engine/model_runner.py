"""Turns a scheduled step into tensors, runs the model over the paged KV cache, and samples.

Flow of one step: `SchedulerOutput` (requests, tokens to compute) -> `StepInputs` (flat input ids and positions
of every request's new tokens, per-group slot mappings and block tables, sequence lengths, query offsets) ->
model forward, where each attention layer writes its k/v into the cache and attends through `PagedKVCache`
(Triton kernels on CUDA, their torch refs on CPU) -> logits of each request's last token, when its prompt is
complete -> `Sampler`.
"""

from dataclasses import dataclass

import numpy as np
import torch

from engine import kernels
from engine.cuda_graphs import DecodeGraphs
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager
from engine.model.reference import Transformer
from engine.request import Request
from engine.sampler import Sampler, SamplerOutput, SamplingBatch
from engine.scheduler import SchedulerOutput


@dataclass
class GroupInputs:
    """Where one layer group's KV lives for this step."""

    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset for each new token
    block_table: torch.Tensor  # [B, max_blocks] int32, padded with the null block


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] token ids of every scheduled token, request after request
    positions: torch.Tensor  # [T]
    seq_lens: torch.Tensor  # [B] int32: tokens in the cache after this step, per request
    query_start_loc: torch.Tensor  # [B + 1] int32: offsets of each request's tokens in input_ids
    groups: list[GroupInputs]  # per KV group
    logits_indices: torch.Tensor  # [S] rows of the hidden states to sample from
    sampled: list[Request]  # [S] the requests those rows belong to


class PagedKVCache:
    """The attention backend the model calls: write this step's k/v, attend over the block tables."""

    def __init__(self, kv_caches: list[torch.Tensor], layout: KVCacheLayout, inputs: StepInputs):
        self.kv_caches, self.layout, self.inputs = kv_caches, layout, inputs

    def attend(self, layer, q, k, v, positions, sinks, window, scale):
        group, slot = self.layout.layer_slots[layer]
        cache, g, x = self.kv_caches[slot], self.inputs.groups[group], self.inputs
        kernels.write_kv(cache, k, v, g.slot_mapping)
        return kernels.paged_attention(q, cache, g.block_table, x.seq_lens, x.query_start_loc, sinks.float(), window,
                                       scale)


class ModelRunner:
    def __init__(self, model: Transformer, layout: KVCacheLayout, num_blocks: int, dtype: torch.dtype,
                 device: torch.device, num_kv_heads: int | None = None):
        c = model.config
        self.model, self.layout, self.device = model, layout, device
        num_kv_heads = num_kv_heads or c.num_key_value_heads  # fewer on a tensor-parallel rank
        shape = (2, num_blocks, layout.block_size, num_kv_heads, c.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layout.num_slots)]
        self.sampler = Sampler()
        self.graphs: DecodeGraphs | None = None

    def capture_decode_graphs(self, max_blocks_per_seq: int, batch_sizes, capture: bool = True) -> None:
        """From now on decode steps of up to max(batch_sizes) requests replay CUDA graphs (`capture=False`: the
        same padded static-buffer path run eagerly, for tests off CUDA)."""
        self.graphs = DecodeGraphs(self._forward_buffers, self.layout, max_blocks_per_seq, self.device, batch_sizes,
                                   capture)
        self.graphs.capture_all()

    def _forward_buffers(self, input_ids, positions, seq_lens, query_start_loc, slot_mappings, block_tables):
        groups = [GroupInputs(s, t) for s, t in zip(slot_mappings, block_tables)]
        inputs = StepInputs(input_ids, positions, seq_lens, query_start_loc, groups, None, [])
        return self.model(input_ids, positions, PagedKVCache(self.kv_caches, self.layout, inputs))

    @staticmethod
    def bytes_per_block(config, layout: KVCacheLayout, block_size: int, dtype: torch.dtype,
                        num_kv_heads: int | None = None) -> int:
        per_slot = 2 * block_size * (num_kv_heads or config.num_key_value_heads) * config.head_dim * dtype.itemsize
        return per_slot * layout.num_slots

    def prepare(self, out: SchedulerOutput, kv: KVCacheManager) -> StepInputs:
        return prepare_inputs(out, kv, self.layout, self.device)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, kv: KVCacheManager, vocab_size: int) -> dict[str, tuple[int, dict | None]]:
        """Run one step; returns request id -> (sampled token, logprobs entry or None) for requests that sample."""
        inputs = self.prepare(out, kv)
        hidden = self.forward(inputs)
        if not inputs.sampled:
            return {}
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        return self.sample(logits, inputs.sampled, vocab_size)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Final hidden states [T, D] of every scheduled token; writes this step's KV into the cache."""
        g = self.graphs
        if g is not None and g.can_run(inputs.input_ids.shape[0], inputs.seq_lens.shape[0],
                                       max(x.block_table.shape[1] for x in inputs.groups)):
            return g.run(inputs.input_ids, inputs.positions, inputs.seq_lens,
                         [x.slot_mapping for x in inputs.groups], [x.block_table for x in inputs.groups])
        return self.model(inputs.input_ids, inputs.positions, PagedKVCache(self.kv_caches, self.layout, inputs))

    def sampling_batch(self, requests: list[Request], vocab_size: int) -> SamplingBatch:
        return sampling_batch(requests, vocab_size, self.device)

    def sample(self, logits: torch.Tensor, requests: list[Request], vocab_size: int,
               batch: SamplingBatch | None = None) -> dict:
        result = self.sampler(logits, batch or self.sampling_batch(requests, vocab_size))
        return sampled_entries(result, [r.request_id for r in requests], [r.params.logprobs for r in requests])


def sampling_batch(requests: list[Request], vocab_size: int, device) -> SamplingBatch:
    return SamplingBatch.build([r.params for r in requests], [r.prompt_token_ids for r in requests],
                               [r.output_token_ids for r in requests], [r.generator for r in requests],
                               [r.stop_ids for r in requests], vocab_size, device)


def sampled_entries(result: SamplerOutput, request_ids: list[str], num_logprobs: list[int | None]) -> dict:
    """request id -> (token, {token: logprob} of the top-n plus the chosen token, or None without logprobs)."""
    tokens, chosen = result.token_ids.tolist(), result.logprobs.tolist()
    topn_ids, topn_lp = result.topn_ids.tolist(), result.topn_logprobs.tolist()
    sampled = {}
    for i, rid in enumerate(request_ids):
        entry = None
        n = num_logprobs[i]
        if n is not None:
            entry = dict(zip(topn_ids[i][:n], topn_lp[i][:n]))
            entry[tokens[i]] = chosen[i]
        sampled[rid] = (tokens[i], entry)
    return sampled


def prepare_inputs(out: SchedulerOutput, kv: KVCacheManager, layout: KVCacheLayout, device) -> StepInputs:
    """Flatten one scheduled step into tensors on `device` (the requests themselves stay on the host; a
    multi-rank engine builds these on the host and sends them to every rank)."""
    def tensor(values, dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=dtype).to(device, non_blocking=True)

    bs = layout.block_size
    requests = [r for r, _ in out.scheduled]
    counts = np.fromiter((n for _, n in out.scheduled), dtype=np.int64, count=len(requests))
    begins = np.fromiter((r.num_computed_tokens for r in requests), dtype=np.int64, count=len(requests))
    ends = begins + counts
    starts = np.concatenate([[0], np.cumsum(counts)])
    row = np.repeat(np.arange(len(requests)), counts)  # [T] which request each token belongs to
    positions = np.arange(starts[-1]) - starts[row] + begins[row]  # [T]
    ids = [t for (r, n), b in zip(out.scheduled, begins.tolist()) for t in r.token_ids_between(b, b + n)]
    groups = []
    for g in range(len(layout.windows)):
        table = _padded([kv.block_tables(r)[g] for r in requests])
        slots = table[row, positions // bs].astype(np.int64) * bs + positions % bs
        groups.append(GroupInputs(tensor(slots, torch.long), tensor(table, torch.int32)))
    done = ends == np.fromiter((r.num_tokens for r in requests), dtype=np.int64, count=len(requests))
    return StepInputs(
        input_ids=tensor(ids, torch.long), positions=tensor(positions, torch.long),
        seq_lens=tensor(ends, torch.int32), query_start_loc=tensor(starts, torch.int32),
        groups=groups, logits_indices=tensor(starts[1:][done] - 1, torch.long),
        sampled=[r for r, d in zip(requests, done) if d])


def _padded(tables: list[list[int]]) -> np.ndarray:
    """Block tables as one [B, max_blocks] int32 array, padded with the null block."""
    padded = np.zeros((len(tables), max(map(len, tables))), dtype=np.int32)
    for i, t in enumerate(tables):
        padded[i, : len(t)] = t
    return padded
