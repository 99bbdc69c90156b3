"""The forward pass over the paged KV cache: one rank's KV tensors, a step's inputs as tensors, CUDA graphs.

Flow of one step (engine.worker drives it): `ScheduledRequest`s (tokens, start positions) and the rank's block
tables -> `prepare_inputs` -> `StepInputs` on the host (flat input ids and positions of every request's new tokens,
per-group slot mappings and block tables, sequence lengths, query offsets, the rows to sample) -> `ModelRunner.
forward`, where each attention layer writes its k/v into the cache and attends through `PagedKVCache` (Triton
kernels on CUDA, their torch refs on CPU) -> final hidden states; the worker takes the logits of the sampled rows.
"""

from dataclasses import dataclass

import numpy as np
import torch

from engine import kernels
from engine.cuda_graphs import DecodeGraphs
from engine.kv_cache_manager import KVCacheLayout
from engine.model.reference import Transformer
from engine.scheduler_output import ScheduledRequest


@dataclass
class GroupInputs:
    """Where one layer group's KV lives for this step."""

    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset for each new token
    block_table: torch.Tensor  # [B, max_blocks] int32, padded with the null block


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] token ids of every scheduled token, request after request (PENDING: filled in
    #                          on the device from the step before, engine.worker)
    positions: torch.Tensor  # [T]
    seq_lens: torch.Tensor  # [B] int32: tokens in the cache after this step, per request
    query_start_loc: torch.Tensor  # [B + 1] int32: offsets of each request's tokens in input_ids
    groups: list[GroupInputs]  # per KV group
    logits_indices: torch.Tensor  # [S] rows of the hidden states to sample from
    sampled: list[str]  # [S] the requests those rows belong to


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

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Final hidden states [T, D] of every scheduled token; writes this step's KV into the cache."""
        g = self.graphs
        if g is not None and g.can_run(inputs.input_ids.shape[0], inputs.seq_lens.shape[0],
                                       max(x.block_table.shape[1] for x in inputs.groups)):
            return g.run(inputs.input_ids, inputs.positions, inputs.seq_lens,
                         [x.slot_mapping for x in inputs.groups], [x.block_table for x in inputs.groups])
        return self.model(inputs.input_ids, inputs.positions, PagedKVCache(self.kv_caches, self.layout, inputs))


def prepare_inputs(requests: list[ScheduledRequest], tables: dict[str, list[list[int]]],
                   layout: KVCacheLayout) -> StepInputs:
    """Flatten one scheduled step into host tensors (the worker moves them to its device). `tables`: request id ->
    per KV group its block table, as the rank holds it."""
    bs, B = layout.block_size, len(requests)
    counts = np.fromiter((len(r.token_ids) for r in requests), dtype=np.int64, count=B)
    begins = np.fromiter((r.start for r in requests), dtype=np.int64, count=B)
    samples = np.fromiter((r.sample for r in requests), dtype=bool, count=B)
    starts = np.concatenate([[0], np.cumsum(counts)])
    row = np.repeat(np.arange(B), counts)  # [T] which request each token belongs to
    positions = np.arange(starts[-1]) - starts[row] + begins[row]  # [T]
    ids = np.fromiter((t for r in requests for t in r.token_ids), dtype=np.int64, count=int(starts[-1]))
    groups = []
    for g in range(len(layout.windows)):
        table = _padded([tables[r.request_id][g] for r in requests])
        slots = table[row, positions // bs].astype(np.int64) * bs + positions % bs
        groups.append(GroupInputs(torch.from_numpy(slots), torch.from_numpy(table)))
    return StepInputs(
        input_ids=torch.from_numpy(ids), positions=torch.from_numpy(positions),
        seq_lens=torch.from_numpy((begins + counts).astype(np.int32)),
        query_start_loc=torch.from_numpy(starts.astype(np.int32)), groups=groups,
        logits_indices=torch.from_numpy(starts[1:][samples] - 1),
        sampled=[r.request_id for r in requests if r.sample])


def _padded(tables: list[list[int]]) -> np.ndarray:
    """Block tables as one [B, max_blocks] int32 array, padded with the null block."""
    padded = np.zeros((len(tables), max(map(len, tables))), dtype=np.int32)
    for i, t in enumerate(tables):
        padded[i, : len(t)] = t
    return padded
