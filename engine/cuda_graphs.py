"""CUDA graphs for decode steps: the whole forward captured once per batch size, then replayed.

A decode step (one new token per request) launches a few hundred small kernels; at small batches the launch
overhead is as long as the work. `DecodeGraphs` captures the model's forward at fixed batch sizes over static input
buffers, and a step of B requests copies its inputs into the buffers of the smallest captured size >= B and
replays that graph. The padding rows read and write only the null block (block 0, which no request owns).

The kernels on this path are graph-safe by construction: they size their grids from shapes and never sync the host
(engine.kernels.moe.route, engine.kernels.attention.paged_attention). Steps with prefill tokens, or more requests
than the largest captured size, run eagerly.

`capture=False` keeps the padding and the static buffers but runs the forward eagerly: the same code path without
CUDA, so CPU tests check it (tests/engine/test_cuda_graphs.py).
"""

from dataclasses import dataclass

import torch

from engine.kv_cache_manager import KVCacheLayout

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass
class _Buffers:
    """The static inputs every captured graph reads, sized for the largest batch."""

    input_ids: torch.Tensor  # [B] long
    positions: torch.Tensor  # [B] long
    seq_lens: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B + 1] int32: 0, 1, ..., B (one token per request)
    slot_mappings: list[torch.Tensor]  # per group [B] long
    block_tables: list[torch.Tensor]  # per group [B, max_blocks] int32


class DecodeGraphs:
    def __init__(self, forward, layout: KVCacheLayout, max_blocks_per_seq: int, device: torch.device,
                 batch_sizes=DEFAULT_BATCH_SIZES, capture: bool = True):
        """`forward(input_ids, positions, seq_lens, query_start_loc, slot_mappings, block_tables) -> [B, D]`
        (the model over the paged cache); `max_blocks_per_seq`: the widest block table a step can have."""
        self.forward, self.layout, self.capture = forward, layout, capture
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.max_batch, self.max_blocks = self.batch_sizes[-1], max_blocks_per_seq
        n, groups = self.max_batch, len(layout.windows)
        zeros = dict(device=device)
        self.buf = _Buffers(
            torch.zeros(n, dtype=torch.long, **zeros), torch.zeros(n, dtype=torch.long, **zeros),
            torch.ones(n, dtype=torch.int32, **zeros), torch.arange(n + 1, dtype=torch.int32, **zeros),
            [torch.zeros(n, dtype=torch.long, **zeros) for _ in range(groups)],
            [torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, **zeros) for _ in range(groups)])
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.replays = 0  # steps served by a graph (or by the eager twin when capture is False)

    # ---- capture ----
    def capture_all(self) -> None:
        """Capture one graph per batch size, largest first, sharing one memory pool."""
        if not self.capture:
            return
        pool = None
        self._reset_padding(self.max_batch)
        for size in reversed(self.batch_sizes):
            torch.cuda.synchronize()
            for _ in range(2):  # warm up: Triton compiles, allocator settles
                self._run_forward(size)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._run_forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def _run_forward(self, size: int) -> torch.Tensor:
        b = self.buf
        return self.forward(b.input_ids[:size], b.positions[:size], b.seq_lens[:size], b.query_start_loc[:size + 1],
                            [s[:size] for s in b.slot_mappings], [t[:size] for t in b.block_tables])

    # ---- replay ----
    def can_run(self, num_tokens: int, num_seqs: int, table_width: int) -> bool:
        return num_tokens == num_seqs <= self.max_batch and table_width <= self.max_blocks and num_seqs > 0

    def padded_size(self, num_seqs: int) -> int:
        return next(s for s in self.batch_sizes if s >= num_seqs)

    def run(self, input_ids, positions, seq_lens, slot_mappings, block_tables) -> torch.Tensor:
        """Hidden states [B, D] of a decode step (B = len(input_ids) requests, one token each)."""
        B = input_ids.shape[0]
        size = self.padded_size(B)
        b = self.buf
        b.input_ids[:B].copy_(input_ids)
        b.positions[:B].copy_(positions)
        b.seq_lens[:B].copy_(seq_lens)
        for group, (slots, table) in enumerate(zip(slot_mappings, block_tables)):
            b.slot_mappings[group][:B].copy_(slots)
            b.block_tables[group][:B, : table.shape[1]].copy_(table)
            b.block_tables[group][:B, table.shape[1]:].zero_()
        self._reset_padding(size, first=B)
        self.replays += 1
        if not self.capture:
            return self._run_forward(size)[:B]
        self.graphs[size].replay()
        return self.outputs[size][:B]

    def _reset_padding(self, size: int, first: int = 0) -> None:
        """Rows [first, size): one token at position 0 of a one-token sequence in the null block."""
        b = self.buf
        b.input_ids[first:size].zero_()
        b.positions[first:size].zero_()
        b.seq_lens[first:size].fill_(1)
        for slots, table in zip(b.slot_mappings, b.block_tables):
            slots[first:size].zero_()
            table[first:size].zero_()
