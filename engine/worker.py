"""One rank of the engine, and the whole engine's device side with one rank: the weights, the KV cache tensors, the
forward pass and sampling. The same class runs in-process (engine.executor.InProcExecutor) and in every rank
process (engine.parallel.executor); with one rank it loads the whole checkpoint, with several its shard.

Flow of a step, split where the host work ends and the device work begins:
  `prepare(outputs)` (host): this rank's group's `SchedulerOutput` -> its block tables updated (new entries, window
      releases) -> `PreparedStep` of host tensors (engine.model_runner.prepare_inputs);
  `run(prepared)` (device) = `begin`: sampling state installed / dropped, inputs to the device, PENDING ids filled
      from the previous step's sampled tokens -> `forward` -> `finish`: logits of the sampled rows -> on the group's
      first rank, `SamplingBatch` from the per-request `SamplingState` -> `Sampler` -> {request id: (token, logprobs)}.
The in-process executor calls `prepare` on the engine thread and the rest on a device thread, so the host prepares
step N+1 while step N runs; `prepare` touches only the block tables, the device half only the device state,
sampling state included. Sampling state that lives across steps (each seeded request's generator, its sampled
tokens for the penalties and min_tokens, its grammar constraint) is kept here, on the sampling rank, from the
request's first step until the scheduler lists it as finished. A constrained request's `HarmonyConstraint`
(engine.structured.harmony) fills its row of the step's token bitmask on a host thread started in `begin`, so it
runs while the forward pass does; `finish` waits for it, the sampler applies it before any other logit processing,
and the sampled token moves the constraint on (before the next step's `begin` starts the next fill).
"""

import dataclasses
import os
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from engine.block_pool import NULL_BLOCK
from engine.config import EngineConfig
from engine.kernels import cpu_native
from engine.kv_cache_manager import KVCacheLayout
from engine.model.kernel_model import build_kernel_model
from engine.model.reference import Transformer
from engine.model_runner import GroupInputs, ModelRunner, StepInputs, prepare_inputs
from engine.parallel.comm import Comm
from engine.parallel.layers import build_parallel_model
from engine.parallel.loading import load_shard, tensor_bytes
from engine.parallel.tp import RankLayout, kv_heads
from engine.sampler import Sampler, SamplerOutput, SamplingBatch, SamplingRow, SamplingTable, seeded_generator
from engine.scheduler_output import PENDING, NewRequestData, SchedulerOutput
from engine.structured.harmony import HarmonyConstraint, accept_rows, fill_rows
from engine.structured.params import StructuredOutputs
from engine.utils import resolve_dtype
from engine.weights.checkpoint import load_weights

SampledTokens = dict[str, tuple[int, dict[int, float] | None]]  # request id -> (token, its logprobs entry or None)


@dataclass
class LoadReport:
    """What a rank says after loading its weights."""

    rank: int
    pid: int
    host: str
    tensor_bytes: dict[str, int]  # bytes of this rank's weights by category (experts, attention, vocab, ...)
    kv_budget: int  # bytes this rank can give its KV cache
    bytes_per_block: int  # bytes one KV block takes on this rank (its KV heads only)


@dataclass
class SamplingState:
    """One request's sampling across its steps, on the rank that samples its attention group."""

    row: SamplingRow  # its SamplingParams as a row of the sampler's batch (made once)
    generator: torch.Generator | None  # its own random stream when seeded (params.seed + sample index)
    prompt_token_ids: list[int]  # for the repetition penalty (empty without one)
    output_token_ids: list[int]  # the tokens sampled for it here, when it has penalties or min_tokens
    stop_ids: list[int]  # banned until min_tokens outputs
    constraint: HarmonyConstraint | None = None  # its grammar / reasoning budget, moved on by each sampled token


@dataclass
class PreparedStep:
    """One step as host tensors, between `Worker.prepare` and `Worker.run`."""

    inputs: StepInputs  # this rank's attention group's inputs (host tensors)
    pending_index: torch.Tensor  # [P] positions in inputs.input_ids that hold PENDING
    pending_from: list[str]  # [P] the request whose token sampled in the step before goes there
    new_requests: list[NewRequestData]  # sampling state to install before this step
    finished: list[str]  # sampling state to drop before this step
    token_counts: list[int]  # tokens of every attention group this step (the MoE collectives size by them)


class Worker:
    def __init__(self, config: EngineConfig, rank: RankLayout, device: str):
        self.config, self.rank = config, rank
        self.device, self.dtype = torch.device(device), resolve_dtype(config.model.dtype)
        self.samples = rank.tp_rank == 0  # the first rank of each attention group samples
        self.keep_sampled = config.scheduler.async_on(self.device.type)  # PENDING ids: the last step's tokens
        self.tables: dict[str, list[list[int]]] = {}  # request id -> per KV group its block table (prepare)
        self.released: dict[str, tuple[int, ...]] = {}  # request id -> window release bounds applied (prepare)
        self.sampling: dict[str, SamplingState] = {}  # request id -> its sampling state (run, sampling rank)
        self.last_sampled: tuple[torch.Tensor, list[str]] | None = None  # the last step's tokens [S], their requests
        self.table: tuple[tuple[str, ...], SamplingTable] | None = None  # the last batch's rows (run)
        self.sampler = Sampler()
        self.tokenizer = None  # loaded when the first constrained request comes (its grammars need the vocabulary)
        self.masker: ThreadPoolExecutor | None = None  # the thread that fills bitmasks during the forward pass
        self.mask_job: Future | None = None  # this step's bitmask: [S, W] int32 and its rows, or None
        self.comm = self.model = self.runner = self.moe_dispatch = None

    # ---- start-up ----
    def free_address(self) -> tuple[str, int]:
        """This host's address and a free TCP port for the process group's rendezvous (asked of rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            return _host_ip(), s.getsockname()[1]

    @property
    def packed(self) -> bool:
        """Experts kept packed in MXFP4 for engine.kernels' MoE (else dequantized for the reference MoE)."""
        return self.config.model.backend != "reference"

    def load(self, init_method: str | None = None) -> LoadReport:
        """Join the process group (several ranks) and load the weights: the whole checkpoint, or this rank's shard."""
        config, world = self.config, self.rank.world_size
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        elif world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        model_dir, packed = str(config.model.model), self.packed
        if world == 1:
            self.comm = Comm.single()
            arch, weights = load_weights(model_dir, self.dtype, self.device, dequantize_experts=not packed)
            self.model = (build_kernel_model if packed else Transformer.from_weights)(arch, weights)
        else:
            timeout = config.parallel.collective_timeout_s
            self.comm = Comm.init(self.rank, init_method, _dist_backend(self.device), timeout)
            arch, weights = load_shard(model_dir, self.rank, self.dtype, self.device, not packed)
            self.model, self.moe_dispatch = build_parallel_model(arch, weights, self.rank, self.comm, packed,
                                                                 config.parallel.moe_dispatch)
        self.arch, self.vocab_size = arch, arch.vocab_size
        if self.device.type == "cpu":
            cpu_native.library()  # built (first time on this machine: a second or two) at load, not in a request
        k0, k1 = kv_heads(arch, self.rank)
        self.num_kv_heads, self.layout = k1 - k0, KVCacheLayout.for_model(arch, config.cache.block_size)
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0
        per_block = ModelRunner.bytes_per_block(arch, self.layout, config.cache.block_size, self.dtype,
                                                self.num_kv_heads)
        return LoadReport(self.rank.rank, os.getpid(), socket.gethostname(), tensor_bytes(weights),
                          config.cache.kv_budget(self.device.type, free), per_block)

    def init_cache(self, num_blocks: int) -> None:
        """Allocate this rank's KV cache (the same block count on every rank, its own KV heads); with one rank on
        CUDA and the kernel backend, capture the decode graphs (the reference MoE syncs the host, so it cannot be)."""
        self.runner = ModelRunner(self.model, self.layout, num_blocks, self.dtype, self.device, self.num_kv_heads)
        if (self.device.type == "cuda" and self.packed and self.rank.world_size == 1
                and not self.config.model.enforce_eager):
            self.runner.capture_decode_graphs(self.max_blocks_per_sequence, self.graph_batch_sizes())

    @property
    def max_blocks_per_sequence(self) -> int:
        """The widest block table a step can have (a full-attention group at the context limit)."""
        limit = self.config.model.context_limit(self.arch.max_position_embeddings)
        return -(-(limit + 1) // self.config.cache.block_size)

    def graph_batch_sizes(self) -> tuple[int, ...]:
        from engine.cuda_graphs import DEFAULT_BATCH_SIZES  # noqa: PLC0415

        sizes = self.config.model.cuda_graph_batch_sizes or DEFAULT_BATCH_SIZES
        return tuple(sorted({min(b, self.config.scheduler.max_num_seqs) for b in sizes}))

    # ---- steps ----
    def execute(self, outputs: list[SchedulerOutput]) -> SampledTokens | None:
        """One step (a rank process runs both halves in turn): the sampled tokens on a sampling rank, else None."""
        return self.run(self.prepare(outputs))

    def prepare(self, outputs: list[SchedulerOutput]) -> PreparedStep:
        """The host half: `outputs` holds every attention group's step, indexed by dp rank."""
        out = outputs[self.rank.dp_rank]
        for rid in out.finished_request_ids:
            self.tables.pop(rid, None)
            self.released.pop(rid, None)
        for r in out.requests:
            self._update_table(r.request_id, r.table_start, r.block_ids, r.start)
        if out.requests:
            inputs = prepare_inputs(out.requests, self.tables, self.layout)
        else:  # an idle attention group still joins the MoE collectives
            inputs = dummy_inputs(len(self.layout.windows))
        pending = np.flatnonzero(inputs.input_ids.numpy() == PENDING)
        rows = np.searchsorted(inputs.query_start_loc.numpy(), pending, side="right") - 1
        return PreparedStep(inputs, torch.from_numpy(pending), [out.requests[i].request_id for i in rows],
                            out.new_requests, out.finished_request_ids,
                            [max(1, o.num_tokens) for o in outputs])

    def _update_table(self, rid: str, start: int, block_ids: list[list[int]], position: int) -> None:
        """The null block where a sliding window has moved past `position` (the KV cache manager released those
        blocks by the same rule before sending), then the new entries from `start` on (already released)."""
        bounds = self.layout.release_bounds(position)
        if start == 0:
            self.tables[rid] = [list(b) for b in block_ids]
        else:
            for table, new, old, bound in zip(self.tables[rid], block_ids, self.released[rid], bounds):
                table[old:min(bound, start)] = [NULL_BLOCK] * max(0, min(bound, start) - old)
                del table[start:]
                table.extend(new)
        self.released[rid] = bounds

    def run(self, step: PreparedStep) -> SampledTokens | None:
        """The device half: forward, then sample on the first rank of the group (begin, forward, finish)."""
        inputs = self.begin(step)
        rows = self.finish(inputs, self.forward(inputs))
        return None if rows is None else rows.entries()

    @torch.inference_mode()
    def begin(self, step: PreparedStep) -> StepInputs:
        """Sampling state installed / dropped, the constrained rows' bitmask started, the inputs on the device with
        PENDING ids filled in."""
        self._update_sampling_state(step)
        self.mask_job = self._start_mask(step.inputs.sampled) if self.samples else None
        inputs = step.inputs if self.device.type == "cpu" else _to_device(step.inputs, self.device)
        if step.pending_from:
            tokens, ids = self.last_sampled
            if step.pending_from != ids:  # else (the usual decode step) the rows line up already
                row_of = {rid: i for i, rid in enumerate(ids)}
                tokens = tokens[torch.tensor([row_of[rid] for rid in step.pending_from], device=self.device)]
            inputs.input_ids[step.pending_index.to(self.device)] = tokens
        if self.moe_dispatch is not None:
            self.moe_dispatch.token_counts = step.token_counts
        return inputs

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Final hidden states [T, D]; writes this step's KV into the cache."""
        return self.runner.forward(inputs)

    @torch.inference_mode()
    def finish(self, inputs: StepInputs, hidden: torch.Tensor) -> "SampledRows | None":
        """Logits of the sampled rows -> tokens (on the sampling rank; the others return None)."""
        if not inputs.sampled:
            self.last_sampled = None
            return SampledRows([], None, [])
        h = hidden[inputs.logits_indices]
        if not self.samples:  # the vocabulary-parallel unembedding gathers on every rank; the first one samples
            self.model.unembed(h)
            rows = None
        else:
            rows = self._sample(h, inputs.sampled)
        if self.keep_sampled:
            self._keep(None if rows is None else rows.output.token_ids, inputs.sampled)
        return rows

    def _update_sampling_state(self, step: PreparedStep) -> None:
        if not self.samples:
            return
        if step.finished or step.new_requests:
            self.table = None  # an id may come back as a new request with other parameters
        for rid in step.finished:
            self.sampling.pop(rid, None)
        for new in step.new_requests:
            self.sampling[new.request_id] = SamplingState(SamplingRow.of(new.params, self.vocab_size),
                                                          seeded_generator(new.seed, self.device),
                                                          new.prompt_token_ids, [], new.stop_ids,
                                                          self._constraint(new))

    def _constraint(self, new: NewRequestData) -> HarmonyConstraint | None:
        """The request's constraint (its grammars were compiled, or checked, before it was queued)."""
        params = new.params
        if not params.constrained:
            return None
        if self.tokenizer is None:
            from engine.text.tokenizer import Tokenizer  # noqa: PLC0415

            self.tokenizer = Tokenizer.load(self.config.model.model)
        return HarmonyConstraint.of(params.structured_outputs or StructuredOutputs(), self.tokenizer,
                                    self.vocab_size, params.max_reasoning_tokens, new.stop_ids)

    def _sample(self, h: torch.Tensor, request_ids: list[str]) -> "SampledRows":
        """The sampled rows' final hidden states [S, D] -> the sampled tokens (with their logprobs); appended to the
        token history of the requests that read it (penalties, min_tokens). The logits [S, V] (the model's dtype) are
        made here, except for a plain greedy batch where the unembedding offers `greedy` (the kernel model's on an AMX
        CPU, or an AVX2-only one from 8 rows: each row's argmax without the logits)."""
        states = [self.sampling[rid] for rid in request_ids]
        key = tuple(request_ids)
        if self.table is None or self.table[0] != key:  # decode steps of the same requests reuse it
            self.table = key, SamplingTable.of([s.row for s in states], self.device)
        batch = SamplingBatch.from_table(self.table[1], [s.prompt_token_ids for s in states],
                                         [s.output_token_ids for s in states], [s.generator for s in states],
                                         [s.stop_ids for s in states], self.device)
        mask, constrained = self.mask_job.result() if self.mask_job is not None else (None, [])
        if constrained:
            batch.bitmask, batch.bitmask_rows = mask.to(self.device, non_blocking=True), constrained
        greedy = getattr(self.model.unembed, "greedy", None) if self.sampler.plain_greedy(batch) else None
        tokens = greedy(h) if greedy is not None else None
        out = Sampler.greedy_output(tokens) if tokens is not None else self.sampler(self.model.unembed(h), batch)
        if constrained:
            constraints = [states[i].constraint for i in constrained]
            accept_rows(constraints, out.token_ids[constrained].tolist(), constraints[0].compiler.batch_matcher)
        special = self.table[1].special
        if special:
            for i, token in zip(special, out.token_ids[special].tolist()):
                states[i].output_token_ids.append(token)
        return SampledRows(request_ids, out, [s.row.params.logprobs for s in states])

    def _start_mask(self, request_ids: list[str]) -> Future | None:
        """Fill the bitmask of this step's constrained rows on the mask thread (None: no row is constrained)."""
        rows = [i for i, rid in enumerate(request_ids)
                if (c := self.sampling[rid].constraint) is not None and c.active]
        if not rows:
            return None
        if self.masker is None:
            self.masker = ThreadPoolExecutor(1, thread_name_prefix="gptoss-mask")
        constraints = [self.sampling[request_ids[i]].constraint for i in rows]
        return self.masker.submit(_fill_mask, constraints, rows, len(request_ids), self.vocab_size)

    def _keep(self, tokens: torch.Tensor | None, request_ids: list[str]) -> None:
        """Keep this step's sampled tokens on the device for the next step's PENDING ids; the other ranks of the
        attention group get them from its first rank (a broadcast of [S] ids)."""
        if self.comm.tp.size > 1:
            if tokens is None:
                tokens = torch.empty(len(request_ids), dtype=torch.long, device=self.device)
            self.comm.tp.broadcast(tokens)
        self.last_sampled = tokens, request_ids

    # ---- introspection and teardown ----
    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        Comm.shutdown()


@dataclass
class SampledRows:
    """One step's tokens as the sampler left them (tensors); read into SampledTokens by whoever needs them, so the
    in-process device thread does not spend its time on it."""

    request_ids: list[str]  # [S]
    output: SamplerOutput | None  # None when nothing was sampled
    num_logprobs: list[int | None]  # [S] top-n logprobs each row asked for

    def entries(self) -> SampledTokens:
        return {} if self.output is None else sampled_entries(self.output, self.request_ids, self.num_logprobs)


def sampled_entries(result: SamplerOutput, request_ids: list[str], num_logprobs: list[int | None]) -> SampledTokens:
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


def _fill_mask(constraints: list[HarmonyConstraint], rows: list[int], num_rows: int, vocab_size: int
               ) -> tuple[torch.Tensor, list[int]]:
    """[S, W] int32 (host) with the constrained rows filled (the others are never read), and those rows."""
    mask = np.empty((num_rows, (vocab_size + 31) // 32), dtype=np.uint32)
    fill_rows(constraints, rows, mask, constraints[0].compiler.batch_matcher)
    return torch.from_numpy(mask.view(np.int32)), rows


def dummy_inputs(num_kv_groups: int) -> StepInputs:
    """One throwaway token for an attention group with nothing scheduled: it still has to join the MoE
    collectives. Its KV write is skipped (slot -1) and it reads only the null block."""
    one = torch.zeros(1, dtype=torch.long)
    return StepInputs(input_ids=one, positions=one, seq_lens=torch.ones(1, dtype=torch.int32),
                      query_start_loc=torch.tensor([0, 1], dtype=torch.int32),
                      groups=[GroupInputs(torch.full((1,), -1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.int32))
                              for _ in range(num_kv_groups)],
                      logits_indices=torch.zeros(0, dtype=torch.long), sampled=[])


def _to_device(x, device: torch.device):
    """A copy of a dataclass of tensors (nested in lists and dataclasses) with every tensor on `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, list):
        return [_to_device(v, device) for v in x]
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _to_device(getattr(x, f.name), device)
                                         for f in dataclasses.fields(x) if f.init})
    return x


def _dist_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _host_ip() -> str:
    """The address other nodes reach this one at (the interface of the default route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
