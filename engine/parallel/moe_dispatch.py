"""How tokens reach the experts of other ranks and come back: the MoE's collectives, two interchangeable ways.

Both take a group's tokens x [T_g, D] with their routing (ids, weights [T_g, K], computed on every rank by the
replicated router) and hand the rank's experts rows to compute; `combine` returns [T_g, D] (partial sums fp32
summed over every rank). Every rank calls both, so each is one step of a collective sequence.

`GatherReduce` (default; any MoE split): every rank sees every token. DP > 1: all-gather the groups' tokens
  (padded to the largest group), compute this rank's experts for all of them, reduce-scatter across groups
  (each group gets the sum of its own rows), all-reduce within the TP group. DP = 1: a plain all-reduce.
  Bytes per rank and layer ~ 2 T D (all-reduce of the whole batch); simple, no host sync, graph-capturable.
`AllToAll` (expert parallel only): each token is owned by one rank of its group (the group's tokens split over
  its TP ranks), and is sent only to the ranks holding one of its experts (once per rank, whatever number of
  its K experts live there), with its routing; results come back the same way and the group all-gathers its
  tokens. Bytes per rank and layer ~ 2 (T_g / TP) min(K, R) D + T_g D: less than the all-reduce once DP > 1
  or across nodes; it needs the per-destination counts on the host (one sync per layer).
"""

import torch

from engine.parallel import tp as rules
from engine.parallel.comm import Comm
from engine.parallel.tp import RankLayout


class GatherReduce:
    def __init__(self, comm: Comm):
        self.tp, self.dp = comm.tp, comm.dp
        self.token_counts: list[int] = [0] * comm.dp.size  # tokens of each attention group (set every step)

    def dispatch(self, x, ids, weights):
        if self.dp.size == 1:
            return x, ids, weights
        width = max(self.token_counts)
        meta = torch.cat([ids.float(), weights.float()], dim=1)  # [T_g, 2K]: expert ids are exact in fp32
        xs = self.dp.all_gather_padded(x, width)  # [DP * width, D]
        meta = self.dp.all_gather_padded(meta, width, fill=-1)  # padding rows route to expert -1: skipped
        K = ids.shape[1]
        return xs, meta[:, :K].to(ids.dtype), meta[:, K:]

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        n = out.shape[0]
        if self.dp.size > 1:
            out = self.dp.reduce_scatter(out)  # [width, D]: this group's rows, summed over the groups
            n = self.token_counts[self.dp.rank]
        if self.tp.size > 1:
            self.tp.all_reduce(out)
        return out[:n]


class AllToAll:
    def __init__(self, comm: Comm, num_experts: int, layout: RankLayout):
        self.world, self.tp = comm.world, comm.tp
        owner = torch.empty(num_experts, dtype=torch.long)
        for r in range(layout.world_size):
            e0, e1 = rules.split(num_experts, layout.world_size, r)
            owner[e0:e1] = r
        self.owner = owner  # [E] rank holding each expert
        self.token_counts: list[int] = []  # unused: each group's tokens stay within the ranks it sends to

    def dispatch(self, x, ids, weights):
        self.total = x.shape[0]  # the group's tokens (the same on each of its TP ranks)
        t0, t1 = rules.split(self.total, self.tp.size, self.tp.rank)  # the ones this rank owns
        x, ids, weights = x[t0:t1], ids[t0:t1], weights[t0:t1]
        self.owner = self.owner.to(x.device)
        dest = torch.zeros(x.shape[0], self.world.size, dtype=torch.bool, device=x.device)
        dest[torch.arange(x.shape[0], device=x.device)[:, None], self.owner[ids.long()]] = True  # [n, R]
        rank, token = dest.T.nonzero(as_tuple=True)  # one row per (destination, token), by destination
        send = torch.bincount(rank, minlength=self.world.size)
        ones = [1] * self.world.size
        self.send, self.recv = send.tolist(), self.world.all_to_all(send, ones, ones).tolist()  # host sync
        self.token = token
        K = ids.shape[1]
        meta = torch.cat([ids.float(), weights.float()], dim=1)[token]  # [N, 2K]: expert ids are exact in fp32
        xs = self.world.all_to_all(x[token], self.send, self.recv)
        meta = self.world.all_to_all(meta, self.send, self.recv)
        return xs, meta[:, :K].to(ids.dtype), meta[:, K:]

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        back = self.world.all_to_all(out, self.recv, self.send)  # each sent row's partial sum, from its rank
        sizes = [b - a for a, b in (rules.split(self.total, self.tp.size, i) for i in range(self.tp.size))]
        mine = back.new_zeros((sizes[self.tp.rank], back.shape[1]), dtype=torch.float32)
        mine.index_add_(0, self.token, back.float())
        mine = mine.to(out.dtype)
        if self.tp.size > 1:
            mine = self.tp.all_gather(mine, sizes)  # the whole group's tokens again, on each of its ranks
        return mine


def make_dispatch(name: str, comm: Comm, num_experts: int, layout: RankLayout):
    if name == "alltoall":
        return AllToAll(comm, num_experts, layout)
    return GatherReduce(comm)
