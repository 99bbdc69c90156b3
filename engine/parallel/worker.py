"""One rank: joins the process group, loads its shard, holds its part of the KV cache, runs each step.

Per step it receives a `StepMessage` (the same for every rank), runs the forward pass over its attention group's
inputs, and, on the first rank of each attention group, samples and returns {request id: (token, logprobs)}.
Sampling state that lives across steps (each seeded request's generator) is kept here, on the sampling rank,
keyed by request id, and dropped when the driver lists the request as released.
"""

import dataclasses
import os
import pickle
import socket
import traceback
from dataclasses import dataclass

import torch

from engine import kernels
from engine.kv_cache_manager import KVCacheLayout
from engine.model_runner import GroupInputs, ModelRunner, StepInputs, sampled_entries
from engine.parallel.comm import Comm
from engine.parallel.layers import build_parallel_model
from engine.parallel.loading import load_shard, tensor_bytes
from engine.parallel.tp import RankLayout, kv_heads
from engine.sampler import Sampler, SamplingBatch, seeded_generator
from engine.utils import resolve_dtype

CPU_KV_CACHE_BYTES = 256 << 20  # per rank, as in a single process


@dataclass
class WorkerSpec:
    """Everything a rank needs to start (picklable: it crosses a process boundary)."""

    model_dir: str
    layout: RankLayout
    dtype: str  # "float32" or "bfloat16"
    device: str  # "cpu" or "cuda:N" as this process sees it
    backend: str  # "reference", "kernels" or "auto"
    block_size: int
    kv_cache_memory: int | None  # bytes of KV cache per rank; None: gpu_memory_utilization or 256 MiB on CPU
    gpu_memory_utilization: float
    timeout_s: float  # process-group timeout (every collective)
    moe_dispatch: str = "allreduce"  # how tokens reach other ranks' experts: "allreduce" or "alltoall"

    @property
    def dist_backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"


@dataclass
class LoadReport:
    """What a rank says after loading its shard."""

    rank: int
    pid: int
    host: str
    tensor_bytes: dict[str, int]  # bytes of this rank's weights by category (experts, attention, vocab, ...)
    kv_budget: int  # bytes this rank can give its KV cache
    bytes_per_block: int  # bytes one KV block takes on this rank (its KV heads only)


@dataclass
class GroupStep:
    """One attention group's part of a step (built by the driver from that group's scheduler output)."""

    inputs: StepInputs  # host tensors; `sampled` is empty (requests stay on the driver)
    sampling: SamplingBatch | None  # host tensors, one row per logits index; generators filled in here
    request_ids: list[str]  # per sampled row
    seeds: list[int | None]  # per sampled row: the seed of the request's generator (None: default generator)
    num_logprobs: list[int | None]  # per sampled row

    @property
    def num_tokens(self) -> int:
        return self.inputs.input_ids.shape[0]


@dataclass
class StepMessage:
    groups: list[GroupStep]  # one per attention group (DP), indexed by dp rank
    released: list[str]  # requests finished since the last step: their generators can go


class Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec, self.layout = spec, spec.layout
        self.comm = self.model = self.runner = None
        self.generators: dict[str, torch.Generator | None] = {}

    # ---- start-up ----
    def free_address(self) -> tuple[str, int]:
        """This host's address and a free TCP port for the process group's rendezvous (asked of rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            return _host_ip(), s.getsockname()[1]

    def start(self, init_method: str) -> LoadReport:
        spec = self.spec
        if spec.device == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.layout.world_size))
        else:
            torch.cuda.set_device(torch.device(spec.device))
        self.device, self.dtype = torch.device(spec.device), resolve_dtype(spec.dtype)
        self.comm = Comm.init(spec.layout, init_method, spec.dist_backend, spec.timeout_s)
        packed = spec.backend == "kernels" or (spec.backend == "auto" and kernels.use_triton(self.device))
        config, weights = load_shard(spec.model_dir, spec.layout, self.dtype, self.device, not packed)
        self.config, self.bytes = config, tensor_bytes(weights)
        self.model, self.moe_dispatch = build_parallel_model(config, weights, spec.layout, self.comm, packed,
                                                             spec.moe_dispatch)
        del weights
        k0, k1 = kv_heads(config, spec.layout)
        self.num_kv_heads, self.kv_layout = k1 - k0, KVCacheLayout.for_model(config, spec.block_size)
        return LoadReport(spec.layout.rank, os.getpid(), socket.gethostname(), self.bytes, self._kv_budget(),
                          ModelRunner.bytes_per_block(config, self.kv_layout, spec.block_size, self.dtype,
                                                      self.num_kv_heads))

    def _kv_budget(self) -> int:
        if self.spec.kv_cache_memory is not None:
            return self.spec.kv_cache_memory
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0] * self.spec.gpu_memory_utilization)
        return CPU_KV_CACHE_BYTES

    def init_cache(self, num_blocks: int) -> None:
        """Allocate this rank's KV cache: the same block count on every rank, its own KV heads."""
        self.runner = ModelRunner(self.model, self.kv_layout, num_blocks, self.dtype, self.device,
                                  self.num_kv_heads)
        self.sampler = Sampler()

    # ---- steps ----
    @torch.inference_mode()
    def execute(self, msg: StepMessage) -> dict | None:
        for rid in msg.released:
            self.generators.pop(rid, None)
        step = msg.groups[self.layout.dp_rank]
        self.moe_dispatch.token_counts = [g.num_tokens for g in msg.groups]
        inputs = _to_device(step.inputs, self.device)
        hidden = self.runner.forward(inputs)
        if not step.request_ids:
            return {}
        logits = self.model.unembed(hidden[inputs.logits_indices])  # full [S, V] on the group's first rank
        if logits is None:
            return None
        batch = dataclasses.replace(_to_device(step.sampling, self.device),
                                    generators=[self._generator(r, s) for r, s in zip(step.request_ids, step.seeds)])
        return sampled_entries(self.sampler(logits, batch), step.request_ids, step.num_logprobs)

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if request_id not in self.generators:
            self.generators[request_id] = seeded_generator(seed, self.device)
        return self.generators[request_id]

    # ---- introspection and teardown ----
    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        Comm.shutdown()


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


def dummy_inputs(num_kv_groups: int) -> StepInputs:
    """One throwaway token for an attention group with nothing scheduled: it still has to join the MoE
    collectives. Its KV write is skipped (slot -1) and it reads only the null block."""
    one = torch.zeros(1, dtype=torch.long)
    return StepInputs(input_ids=one, positions=one, seq_lens=torch.ones(1, dtype=torch.int32),
                      query_start_loc=torch.tensor([0, 1], dtype=torch.int32),
                      groups=[GroupInputs(torch.full((1,), -1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.int32))
                              for _ in range(num_kv_groups)],
                      logits_indices=torch.zeros(0, dtype=torch.long), sampled=[])


def _host_ip() -> str:
    """The address other nodes reach this one at (the interface of the default route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def serve(spec: WorkerSpec, conn) -> None:
    """The body of a local (mp) rank process: answer (method, args) calls on `conn` until told to stop or the
    driver goes away. Replies are ("ok", result) or ("error", traceback text)."""
    worker = Worker(spec)
    while True:
        try:
            method, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if method == "stop":
            break
        try:
            reply = ("ok", getattr(worker, method)(*args))
        except Exception:  # noqa: BLE001 - the driver decides; it gets the full traceback
            reply = ("error", traceback.format_exc())
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            break
    worker.close()
