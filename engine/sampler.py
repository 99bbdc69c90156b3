"""Sampler: one step's logits [B, V] -> one token per row, with the raw logprobs the request asked for.

Flow: the worker builds a `SamplingBatch` from the step's `SamplingParams` and token histories
(`SamplingBatch.build`; a worker keeps each request's `SamplingRow` and the batch's `SamplingTable` across steps and
calls `from_table`), calls `Sampler()(logits, batch)`, and gets a `SamplerOutput` back.
Order per row: the grammar's token bitmask (constrained rows only) -> logit_bias -> min_tokens ban -> penalties -> greedy argmax, or temperature -> top-k -> top-p ->
min-p -> exponential-race sample. Logprobs come from the raw logits, before any of that (vLLM's "raw logprobs").
Everything runs batched on the logits' device; the only Python loop is over the rows that carry their own seed.
"""

from dataclasses import dataclass

import torch

from engine import kernels
from engine.sampling_params import SamplingParams

# B = batch rows, V = vocab, N = top-n logprobs, K = (row, token) pairs of a sparse per-row token set

_TINY = torch.finfo(torch.float32).tiny  # floor for the exponential noise, so probs / noise never divides by 0


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A request's own generator (None without a seed); make it once per request and keep it across steps."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


@dataclass
class SamplingBatch:
    temperature: torch.Tensor  # [B] float32; 1.0 on greedy rows so the division is harmless
    greedy: torch.Tensor  # [B] bool; rows that take the argmax
    top_k: torch.Tensor  # [B] long; V where off (0, -1 or larger than V)
    top_p: torch.Tensor  # [B] float32; 1.0 = off
    min_p: torch.Tensor  # [B] float32; 0.0 = off
    presence_penalty: torch.Tensor  # [B] float32
    frequency_penalty: torch.Tensor  # [B] float32
    repetition_penalty: torch.Tensor  # [B] float32
    bias_rows: torch.Tensor  # [K] long; logit_bias as sparse (row, token, value) triples
    bias_ids: torch.Tensor  # [K] long
    bias_values: torch.Tensor  # [K] float32
    ban_rows: torch.Tensor  # [K] long; (row, stop token) pairs banned this step by min_tokens
    ban_ids: torch.Tensor  # [K] long
    output_rows: torch.Tensor  # [K] long; generated tokens of rows with presence/frequency penalty, one per token
    output_ids: torch.Tensor  # [K] long
    seen_rows: torch.Tensor  # [K] long; prompt + generated tokens of rows with a repetition penalty
    seen_ids: torch.Tensor  # [K] long
    generators: list[torch.Generator | None]  # per row; a row with one draws its noise only from it
    num_logprobs: int  # N: the most top-n logprobs any row asked for (0 if none), at most V
    any_logprobs: bool  # some row wants logprobs (else the sampler skips the log-softmax over the vocabulary)
    all_greedy: bool  # host-side flags, so the sampler skips whole stages without a device sync
    any_greedy: bool
    needs_sort: bool  # some sampled row has top-k or top-p on
    needs_min_p: bool
    needs_frequency: bool  # some row has a presence or frequency penalty
    needs_repetition: bool
    bitmask: torch.Tensor | None = None  # [B, W] int32, W = ceil(V / 32): bit t % 32 of word t // 32 allows token t
    #                                      (xgrammar's layout); None: no row is constrained this step
    bitmask_rows: list[int] | None = None  # the rows the bitmask applies to (the others are left as they are)

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        prompt_ids: list[list[int]],
        output_ids: list[list[int]],
        generators: list[torch.Generator | None],
        stop_ids: list[list[int]],
        vocab_size: int,
        device: torch.device | str,
    ) -> "SamplingBatch":
        """Turn one step's requests into tensors on `device`.

        stop_ids[i]: token ids that end request i (eos ids + its stop_token_ids), banned while it has fewer than
        min_tokens outputs. With ignore_eos, eos does not end the request, so only its stop_token_ids are banned.
        """
        table = SamplingTable.of([SamplingRow.of(p, vocab_size) for p in params], device)
        return cls.from_table(table, prompt_ids, output_ids, generators, stop_ids, device)

    @classmethod
    def from_table(
        cls,
        table: "SamplingTable",
        prompt_ids: list[list[int]],
        output_ids: list[list[int]],
        generators: list[torch.Generator | None],
        stop_ids: list[list[int]],
        device: torch.device | str,
    ) -> "SamplingBatch":
        """`build` from the rows' `SamplingTable` (what does not change between steps, reusable while the batch
        holds the same requests); only the rows with a bias, min_tokens or a penalty are looked at per step."""
        if not len(table.rows) == len(prompt_ids) == len(output_ids) == len(generators) == len(stop_ids):
            raise ValueError("params, prompt_ids, output_ids, generators and stop_ids need one entry per row")
        v = table.values
        return cls(
            temperature=v[:, 0], greedy=table.greedy, top_k=v[:, 1].long(), top_p=v[:, 2], min_p=v[:, 3],
            presence_penalty=v[:, 4], frequency_penalty=v[:, 5], repetition_penalty=v[:, 6],
            **_special_rows(table.rows, table.special, prompt_ids, output_ids, stop_ids, device),
            generators=list(generators), num_logprobs=table.num_logprobs, any_logprobs=table.any_logprobs,
            all_greedy=table.all_greedy, any_greedy=table.any_greedy, needs_sort=table.needs_sort,
            needs_min_p=table.needs_min_p, needs_frequency=table.needs_frequency,
            needs_repetition=table.needs_repetition,
        )


def _special_rows(rows: list["SamplingRow"], special: list[int], prompt_ids, output_ids, stop_ids, device) -> dict:
    """The sparse (row, token) sets of the rows in `special`: logit_bias, min_tokens bans, the generated tokens of
    rows with a presence/frequency penalty, prompt + generated tokens of rows with a repetition penalty."""
    if not special:  # the usual batch: every set empty
        empty = torch.empty(0, dtype=torch.long, device=device)
        return {f"{n}_{k}": empty for n in ("bias", "ban", "output", "seen") for k in ("rows", "ids")} | {
            "bias_values": torch.empty(0, dtype=torch.float32, device=device)}
    bias, banned, outputs, seen = {}, {}, {}, {}
    for i in special:
        params, out = rows[i].params, output_ids[i]
        bias[i] = params.logit_bias or {}
        banned[i] = _banned_ids(params, out, stop_ids[i])
        outputs[i] = out if rows[i].frequency else []
        seen[i] = prompt_ids[i] + out if rows[i].repetition else []
    return {**_sparse("bias", {i: list(b) for i, b in bias.items()}, device,
                      values={i: list(b.values()) for i, b in bias.items()}),
            **_sparse("ban", banned, device), **_sparse("output", outputs, device), **_sparse("seen", seen, device)}


@dataclass(frozen=True)
class SamplingRow:
    """One request's sampler settings as a row of the batch, computed once per request."""

    params: SamplingParams
    vocab_size: int  # V
    values: tuple[float, ...]  # temperature (1 when greedy), top_k (V when off), top_p, min_p, presence, frequency,
    #                            repetition: one row of the batch's float table
    greedy: bool  # takes the argmax
    sorts: bool  # top-k or top-p on
    frequency: bool  # a presence or frequency penalty
    repetition: bool  # a repetition penalty
    special: bool  # a logit_bias, min_tokens or a penalty: per-step token sets to build

    @classmethod
    def of(cls, p: SamplingParams, vocab_size: int) -> "SamplingRow":
        top_k = vocab_size if p.top_k <= 0 else min(p.top_k, vocab_size)
        values = (1.0 if p.is_greedy else p.temperature, top_k, p.top_p, p.min_p, p.presence_penalty,
                  p.frequency_penalty, p.repetition_penalty)
        frequency, repetition = p.presence_penalty != 0 or p.frequency_penalty != 0, p.repetition_penalty != 1
        return cls(p, vocab_size, values, p.is_greedy, p.top_p < 1 or 0 < p.top_k < vocab_size, frequency,
                   repetition, bool(p.logit_bias) or p.min_tokens > 0 or frequency or repetition)


@dataclass
class SamplingTable:
    """A batch's rows as tensors and flags: everything of a SamplingBatch that does not change between steps, so a
    worker builds it once for a set of requests and reuses it while they decode together."""

    rows: list[SamplingRow]  # [B]
    values: torch.Tensor  # [B, 7] float32: SamplingRow.values
    greedy: torch.Tensor  # [B] bool
    special: list[int]  # rows with a logit_bias, min_tokens or a penalty (per-step token sets)
    num_logprobs: int  # the most top-n logprobs any row asked for (0 if none), at most V
    any_logprobs: bool
    all_greedy: bool
    any_greedy: bool
    needs_sort: bool
    needs_min_p: bool
    needs_frequency: bool
    needs_repetition: bool

    @classmethod
    def of(cls, rows: list[SamplingRow], device: torch.device | str) -> "SamplingTable":
        values = torch.tensor([r.values for r in rows], dtype=torch.float32).reshape(len(rows), 7).to(device)
        sampled = [r for r in rows if not r.greedy]
        special = [i for i, r in enumerate(rows) if r.special]
        vocab = rows[0].vocab_size if rows else 0
        return cls(
            rows, values, torch.tensor([r.greedy for r in rows], dtype=torch.bool).to(device), special,
            num_logprobs=min(max((r.params.logprobs or 0 for r in rows), default=0), vocab),
            any_logprobs=any(r.params.logprobs is not None for r in rows), all_greedy=not sampled,
            any_greedy=len(sampled) < len(rows), needs_sort=any(r.sorts for r in sampled),
            needs_min_p=any(r.params.min_p > 0 for r in sampled),
            needs_frequency=any(rows[i].frequency for i in special),
            needs_repetition=any(rows[i].repetition for i in special),
        )


def _banned_ids(params: SamplingParams, output: list[int], stop_ids: list[int]) -> list[int]:
    """Stop ids this row may not emit yet (min_tokens not reached)."""
    if len(output) >= params.min_tokens:
        return []
    if params.ignore_eos:  # eos does not end the request, so it need not be banned
        own = set(params.stop_token_ids or [])
        return [t for t in stop_ids if t in own]
    return list(stop_ids)


def _sparse(name: str, ids: dict[int, list[int]], device, values: dict[int, list[float]] | None = None) -> dict:
    """Token lists of some rows (row -> ids) -> flat {name}_rows / {name}_ids [K] (and {name}_values) tensors."""
    rows = [r for r, row_ids in ids.items() for _ in row_ids]
    out = {
        f"{name}_rows": torch.tensor(rows, dtype=torch.long, device=device),
        f"{name}_ids": torch.tensor([t for row_ids in ids.values() for t in row_ids], dtype=torch.long, device=device),
    }
    if values is not None:
        flat = [v for row_values in values.values() for v in row_values]
        out[f"{name}_values"] = torch.tensor(flat, dtype=torch.float32, device=device)
    return out


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] long; the sampled token of each row
    logprobs: torch.Tensor  # [B] float32; raw logprob of that token (zeros when no row asked for logprobs)
    topn_ids: torch.Tensor  # [B, N] long; the N most likely tokens under the raw logits, best first
    topn_logprobs: torch.Tensor  # [B, N] float32; their raw logprobs (rows asking fewer than N slice theirs)


class Sampler:
    """Stateless: all per-request state (histories, generators) arrives in the SamplingBatch."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        # logits: [B, V] in the model's dtype, its raw output for each row's next token; taken to fp32 for the
        # sampling math and edited in place when no row asks for logprobs (the caller does not read them
        # afterwards). Each pass over [B, V] costs about as much as the unembedding at small hidden sizes, so stages
        # nobody asked for are skipped: greedy rows with nothing to edit or report take the argmax of the raw values
        # as they are (bf16 -> fp32 is exact, so the same token), without the conversion pass.
        edits = self.edits(batch)
        changed = edits or batch.bitmask is not None
        if self.plain_greedy(batch):
            return _without_logprobs(kernels.argmax(logits))
        raw = logits.float()
        # `raw` stays the model's distribution for the logprobs; without them the edits go in place (a [B, V] copy
        # at 256 rows costs about half the stand-in step's sampling time)
        logits = raw.clone() if changed and batch.any_logprobs else raw
        if batch.bitmask is not None:
            apply_bitmask(logits, batch.bitmask, batch.bitmask_rows)
        if edits:
            logits = apply_penalties(apply_bans(logits, batch), batch)
        token_ids = self._choose(logits, batch)
        if not batch.any_logprobs:  # rows without logprobs never read them (engine.model_runner.sampled_entries)
            return _without_logprobs(token_ids)
        raw_logprobs = torch.log_softmax(raw, dim=-1)  # [B, V]
        topn_logprobs, topn_ids = raw_logprobs.topk(batch.num_logprobs, dim=-1)  # [B, N]
        return SamplerOutput(
            token_ids=token_ids,
            logprobs=raw_logprobs.gather(-1, token_ids[:, None]).squeeze(-1),
            topn_ids=topn_ids,
            topn_logprobs=topn_logprobs,
        )

    @staticmethod
    def plain_greedy(batch: SamplingBatch) -> bool:
        """Every row greedy, with nothing to edit (bias, bans, penalties, a grammar's mask) or report (logprobs): the
        tokens are the argmax of the raw logits."""
        return batch.all_greedy and not Sampler.edits(batch) and batch.bitmask is None and not batch.any_logprobs

    @staticmethod
    def edits(batch: SamplingBatch) -> bool:
        """Whether some row's logits get a bias, a ban or a penalty."""
        return bool(len(batch.bias_rows) or len(batch.ban_rows) or batch.needs_frequency or batch.needs_repetition)

    @staticmethod
    def greedy_output(token_ids: torch.Tensor) -> SamplerOutput:
        """A plain greedy batch's output from its tokens (found without the logits: KernelLinear.greedy)."""
        return _without_logprobs(token_ids)

    def _choose(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        if batch.all_greedy:
            return kernels.argmax(logits)
        sampled = sample(apply_filters(logits / batch.temperature[:, None], batch), batch)
        if not batch.any_greedy:
            return sampled
        return torch.where(batch.greedy, kernels.argmax(logits), sampled)


def _without_logprobs(token_ids: torch.Tensor) -> SamplerOutput:
    """Rows without logprobs never read them (engine.model_runner.sampled_entries): empty placeholders."""
    empty = torch.empty(len(token_ids), 0, device=token_ids.device)
    return SamplerOutput(token_ids, torch.zeros(len(token_ids), device=token_ids.device), empty.long(), empty)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """In place: the tokens a row's bitmask does not allow get -inf (xgrammar's kernel: CPU, CUDA or Triton)."""
    import xgrammar as xgr  # noqa: PLC0415 - only when a constrained request runs

    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[-1], indices=rows)


def apply_bitmask_ref(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """apply_bitmask in plain torch (the oracle of its test)."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    allowed = ((bitmask[rows, :, None] >> shifts) & 1).bool().flatten(1)[:, :logits.shape[-1]]  # [M, V]
    logits[rows] = logits[rows].masked_fill(~allowed, -torch.inf)


def apply_bans(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """In place: add logit_bias, then set stop tokens still under min_tokens to -inf."""
    logits.index_put_((batch.bias_rows, batch.bias_ids), batch.bias_values, accumulate=True)
    logits[batch.ban_rows, batch.ban_ids] = -torch.inf
    return logits


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """In place. Repetition (HF/CTRL, Keskar et al. 2019) over prompt + output: positive logits / r, negative * r.
    Presence and frequency (OpenAI) over output only: logit -= frequency * count + presence * (count > 0)."""
    if batch.needs_repetition:
        seen = torch.zeros_like(logits, dtype=torch.bool)  # [B, V]
        seen[batch.seen_rows, batch.seen_ids] = True
        r = batch.repetition_penalty[:, None]
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    if batch.needs_frequency:
        counts = torch.zeros_like(logits)  # [B, V]
        ones = torch.ones_like(batch.output_ids, dtype=torch.float32)
        counts.index_put_((batch.output_rows, batch.output_ids), ones, accumulate=True)
        logits -= batch.frequency_penalty[:, None] * counts + batch.presence_penalty[:, None] * (counts > 0)
    return logits


def apply_filters(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Mask to -inf what top-k, then top-p, then min-p drop. logits: [B, V], already divided by temperature."""
    if batch.needs_sort:
        logits = _top_k_top_p(logits, batch.top_k, batch.top_p)
    if batch.needs_min_p:
        probs = logits.softmax(dim=-1)
        too_small = probs < batch.min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        logits = logits.masked_fill(too_small, -torch.inf)
    return logits


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """One descending sort serves both. top-p keeps a token while the probability mass before it (renormalized
    over the top-k survivors) is < top_p, so the top token always stays."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    rank = torch.arange(logits.shape[-1], device=logits.device)
    sorted_logits.masked_fill_(rank[None, :] >= top_k[:, None], -torch.inf)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = (mass_before >= top_p[:, None]) & (top_p < 1)[:, None] & (rank > 0)[None, :]
    sorted_logits.masked_fill_(drop, -torch.inf)
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Exponential race (the Gumbel-max trick in another form): argmax(probs / q), q ~ Exponential(1), picks
    token i with probability probs[i]. Seeded rows draw q from their own generator, so their tokens do not depend
    on the other rows; the rest share one draw from the default generator of the device."""
    probs = logits.softmax(dim=-1)  # [B, V]
    noise = torch.empty_like(probs)
    seeded = [row for row, gen in enumerate(batch.generators) if gen is not None]
    if len(seeded) < len(batch.generators):  # one draw for all unseeded rows (seeded rows are overwritten below)
        noise.exponential_()
    for row in seeded:
        noise[row].exponential_(generator=batch.generators[row])
    return probs.div_(noise.clamp_min_(_TINY)).argmax(dim=-1)
