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
from engine.kv_cache_manager import KVCacheLayout, KVCacheManager
from engine.model.reference import Transformer
from engine.request import Request
from engine.sampler import Sampler, SamplingBatch
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
                 device: torch.device):
        c = model.config
        self.model, self.layout, self.device = model, layout, device
        shape = (2, num_blocks, layout.block_size, c.num_key_value_heads, c.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layout.num_slots)]
        self.sampler = Sampler()

    @staticmethod
    def bytes_per_block(config, layout: KVCacheLayout, block_size: int, dtype: torch.dtype) -> int:
        per_slot = 2 * block_size * config.num_key_value_heads * config.head_dim * dtype.itemsize
        return per_slot * layout.num_slots

    def prepare(self, out: SchedulerOutput, kv: KVCacheManager) -> StepInputs:
        ids, positions, seq_lens, starts = [], [], [], [0]
        slots = [[] for _ in self.layout.windows]
        tables = [[] for _ in self.layout.windows]
        sampled, logits_indices = [], []
        bs = self.layout.block_size
        for request, n in out.scheduled:
            begin, end = request.num_computed_tokens, request.num_computed_tokens + n
            ids.extend(request.all_token_ids[begin:end])
            pos = np.arange(begin, end)
            positions.append(pos)
            for g, table in enumerate(kv.block_tables(request)):
                table_np = np.asarray(table, dtype=np.int64)
                slots[g].append(table_np[pos // bs] * bs + pos % bs)
                tables[g].append(table)
            seq_lens.append(end)
            starts.append(starts[-1] + n)
            if end == request.num_tokens:
                sampled.append(request)
                logits_indices.append(starts[-1] - 1)
        return StepInputs(
            input_ids=self._tensor(ids, torch.long), positions=self._tensor(np.concatenate(positions), torch.long),
            seq_lens=self._tensor(seq_lens, torch.int32), query_start_loc=self._tensor(starts, torch.int32),
            groups=[GroupInputs(self._tensor(np.concatenate(s), torch.long), self._pad(t))
                    for s, t in zip(slots, tables)],
            logits_indices=self._tensor(logits_indices, torch.long), sampled=sampled)

    def _tensor(self, values, dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=dtype).to(self.device, non_blocking=True)

    def _pad(self, tables: list[list[int]]) -> torch.Tensor:
        width = max(len(t) for t in tables)
        padded = np.zeros((len(tables), width), dtype=np.int32)
        for i, t in enumerate(tables):
            padded[i, : len(t)] = t
        return self._tensor(padded, torch.int32)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, kv: KVCacheManager, vocab_size: int) -> dict[str, tuple[int, dict | None]]:
        """Run one step; returns request id -> (sampled token, logprobs entry or None) for requests that sample."""
        inputs = self.prepare(out, kv)
        hidden = self.model(inputs.input_ids, inputs.positions, PagedKVCache(self.kv_caches, self.layout, inputs))
        if not inputs.sampled:
            return {}
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        return self.sample(logits, inputs.sampled, vocab_size)

    def sampling_batch(self, requests: list[Request], vocab_size: int) -> SamplingBatch:
        return SamplingBatch.build([r.params for r in requests], [r.prompt_token_ids for r in requests],
                                   [r.output_token_ids for r in requests], [r.generator for r in requests],
                                   [r.stop_ids for r in requests], vocab_size, self.device)

    def sample(self, logits: torch.Tensor, requests: list[Request], vocab_size: int,
               batch: SamplingBatch | None = None) -> dict:
        result = self.sampler(logits, batch or self.sampling_batch(requests, vocab_size))
        tokens, chosen = result.token_ids.tolist(), result.logprobs.tolist()
        topn_ids, topn_lp = result.topn_ids.tolist(), result.topn_logprobs.tolist()
        sampled = {}
        for i, request in enumerate(requests):
            entry = None
            n = request.params.logprobs
            if n is not None:
                entry = dict(zip(topn_ids[i][:n], topn_lp[i][:n]))
                entry[tokens[i]] = chosen[i]
            sampled[request.request_id] = (tokens[i], entry)
        return sampled
