"""Collectives of one rank: torch.distributed process groups behind small, named operations.

Every rank creates the same groups in the same order (torch.distributed requires it): the world, one attention
group per DP index (TP ranks), and one "same heads" group per TP index (DP ranks). The model layers call the
operations below by name; a group of one rank makes each of them a no-op. Each collective waits at most the
process group's timeout: a dead peer makes gloo fail at once (connection reset), a hung peer after the timeout;
NCCL is run with async error handling so a timed-out collective aborts the communicator and raises.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.parallel.tp import RankLayout


@dataclass
class Group:
    """One process group as seen from one of its ranks."""

    ranks: list[int]  # global ranks, in group order
    rank: int  # this rank's index in `ranks`
    pg: dist.ProcessGroup | None  # None for a group of one: every operation is then the identity

    @property
    def size(self) -> int:
        return len(self.ranks)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the group, in place."""
        if self.pg is not None:
            dist.all_reduce(x, group=self.pg)
        return x

    def all_gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate along dim 0 the [sizes[i], ...] tensors of every member (padded to the largest for the
        collective, trimmed after)."""
        width = max(sizes)
        parts = self.all_gather_padded(x, width).split(width)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def all_gather_padded(self, x: torch.Tensor, width: int, fill: float = 0) -> torch.Tensor:
        """[size * width, ...]: member i's rows at [i * width, i * width + its count), `fill` after them."""
        padded = x.new_full((width, *x.shape[1:]), fill)
        padded[: x.shape[0]] = x
        if self.pg is None:
            return padded
        out = x.new_empty((self.size * width, *x.shape[1:]))
        dist.all_gather_single(out, padded, group=self.pg)
        return out

    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the group of [size * w, ...]; member i keeps rows [i * w, (i + 1) * w) of the sum."""
        if self.pg is None:
            return x
        out = x.new_empty((x.shape[0] // self.size, *x.shape[1:]))
        dist.reduce_scatter_single(out, x.contiguous(), group=self.pg)
        return out

    def all_to_all(self, x: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        """Rows [sum(send_counts[:i]), +send_counts[i]) of x go to member i; returns what every member sent here,
        in member order (recv_counts[i] rows from member i)."""
        if self.pg is None:
            return x
        out = x.new_empty((sum(recv_counts), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv_counts, send_counts, group=self.pg)
        return out

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Member 0's x on every member, in place (x has the same shape and dtype on each)."""
        if self.pg is not None:
            dist.broadcast(x, group_src=0, group=self.pg)
        return x

    def gather_columns(self, x: torch.Tensor, widths: list[int]) -> torch.Tensor | None:
        """Concatenate along the last dim every member's [..., widths[i]] on member 0; None on the others."""
        if self.pg is None:
            return x
        width = max(widths)
        padded = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
        parts = [torch.empty_like(padded) for _ in self.ranks] if self.rank == 0 else None
        dist.gather(padded, parts, group_dst=0, group=self.pg)
        return torch.cat([p[..., :w] for p, w in zip(parts, widths)], dim=-1) if self.rank == 0 else None


SINGLE = Group([0], 0, None)


@dataclass
class Comm:
    """The groups one rank talks over."""

    world: Group
    tp: Group  # this rank's attention group
    dp: Group  # the ranks holding the same heads in every attention group

    @classmethod
    def single(cls) -> "Comm":
        return cls(SINGLE, SINGLE, SINGLE)

    @classmethod
    def init(cls, layout: RankLayout, init_method: str, backend: str, timeout_s: float) -> "Comm":
        """Join the process group (blocks until every rank has) and create the subgroups."""
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a timed-out collective raises
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend, init_method=init_method, rank=layout.rank,
                                world_size=layout.world_size, timeout=timeout)
        tp = _subgroups([layout.tp_group(g) for g in range(layout.dp_size)], layout.rank, backend, timeout)
        dp = _subgroups([layout.dp_group(t) for t in range(layout.tp_size)], layout.rank, backend, timeout)
        world = Group(list(range(layout.world_size)), layout.rank, dist.group.WORLD)
        return cls(world, tp, dp)

    @staticmethod
    def shutdown() -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _subgroups(all_groups: list[list[int]], rank: int, backend: str, timeout: timedelta) -> Group:
    """Create every group of a partition (all ranks must) and return the one holding `rank`."""
    mine = None
    for ranks in all_groups:
        pg = dist.new_group(ranks, timeout=timeout, backend=backend) if len(all_groups[0]) > 1 else None
        if rank in ranks:
            mine = Group(ranks, ranks.index(rank), pg)
    return mine
