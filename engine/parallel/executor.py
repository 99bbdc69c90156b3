"""The executor of a multi-rank engine: one `Worker` per rank, in local processes (`MPExecutor`,
torch.multiprocessing, spawn) or Ray actors in a placement group (`RayExecutor`, one bundle per rank).

Flow: `RankExecutor.start` launches the ranks, which join the process group and load their shards (their
`LoadReport`s); the engine sizes the KV cache and calls `init_cache`. Each step, `execute(outputs)` sends the
same list of `SchedulerOutput`s (one per attention group) to every rank and returns at once; its `result()` waits
for every rank's answer and merges the sampling ranks' tokens. Steps are answered in the order sent, so the engine
can send step N+1 before it reads step N (async scheduling). A rank that raises, dies or does not answer in time
becomes a `RankFailedError` naming the rank and what happened (its exception line, its exit code, or the timeout),
after which the executor is dead: every rank is stopped and later calls raise at once.
"""

import logging
import pickle
import queue
import socket
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from multiprocessing import connection

import torch

from engine.config import EngineConfig, ParallelConfig
from engine.parallel.tp import RankLayout
from engine.scheduler_output import SchedulerOutput
from engine.worker import LoadReport, SampledTokens, Worker

log = logging.getLogger(__name__)


class RankFailedError(RuntimeError):
    """A rank raised, died or stopped answering; the engine cannot continue."""


@dataclass
class WorkerSpec:
    """What one rank's Worker is made from (picklable: it crosses a process boundary)."""

    config: EngineConfig
    layout: RankLayout  # where the rank sits in the TP x DP grid
    device: str  # "cpu" or "cuda:N" as the rank's process sees it


class RankCall:
    """A call sent to every rank; `result()` waits for their answers (in rank order)."""

    def __init__(self, executor: "RankExecutor", method: str, handle, timeout: float):
        self.executor, self.method, self.handle, self.timeout = executor, method, handle, timeout

    def result(self) -> list:
        return self.executor._result(self)


class StepCall:
    """One step in flight: `result()` merges the sampling ranks' tokens (the other ranks answer None)."""

    def __init__(self, call: RankCall):
        self.call = call

    def result(self) -> SampledTokens:
        sampled = {}
        for answer in self.call.result():
            sampled.update(answer or {})
        return sampled


class RankExecutor(ABC):
    def __init__(self, parallel: ParallelConfig, specs: list[WorkerSpec]):
        self.parallel, self.specs = parallel, specs
        self.world_size = len(specs)
        self.error: RankFailedError | None = None
        self.closed = False
        self.reports: list[LoadReport] = []
        self._pids: list[int] = []

    @classmethod
    def start(cls, config: EngineConfig, device: torch.device) -> "RankExecutor":
        """Start every rank of `config` (on `device`'s type), join the process group and load the shards."""
        parallel = config.parallel
        specs = [WorkerSpec(config, RankLayout.of(parallel, r), _rank_device(device, r,
                                                                             parallel.distributed_executor_backend))
                 for r in range(parallel.world_size)]
        executor = {"mp": MPExecutor, "ray": RayExecutor}[parallel.distributed_executor_backend](parallel, specs)
        try:
            init_method = executor._launch()
            executor.reports = executor.call("load", init_method, timeout=parallel.startup_timeout_s)
        except BaseException:
            executor.shutdown()
            raise
        for r in executor.reports:
            log.info("rank %d (pid %d on %s): %s bytes of weights", r.rank, r.pid, r.host, r.tensor_bytes)
        return executor

    # ---- the engine's interface (engine.executor.Executor) ----
    def init_cache(self, num_blocks: int) -> None:
        self.call("init_cache", num_blocks)

    def execute(self, outputs: list[SchedulerOutput]) -> StepCall:
        return StepCall(self.submit("execute", outputs))

    @property
    def healthy(self) -> bool:
        return self.error is None and not self.closed and self._alive()

    # ---- calls on every rank ----
    def call(self, method: str, *args, timeout: float | None = None) -> list:
        """Run `method(*args)` on every rank and wait; their results in rank order."""
        return self.submit(method, *args, timeout=timeout).result()

    def submit(self, method: str, *args, timeout: float | None = None) -> RankCall:
        """Send `method(*args)` to every rank; the answers are read by the returned call's `result()` (at most
        `timeout` seconds from then; default collective_timeout_s + 10), in the order calls were sent."""
        self._check()
        timeout = self.parallel.collective_timeout_s + 10 if timeout is None else timeout
        try:
            return RankCall(self, method, self._send(method, args), timeout)
        except RankFailedError as e:
            self._fail(e)
            raise

    def _result(self, call: RankCall) -> list:
        self._check()
        try:
            return self._receive(call.method, call.handle, call.timeout)
        except RankFailedError as e:
            self._fail(e)
            raise

    def _check(self) -> None:
        if self.error is not None:
            raise RankFailedError(f"the executor failed earlier: {self.error}")

    def _fail(self, error: RankFailedError) -> None:
        self.error = error
        log.error("%s; stopping every rank", error)
        self.shutdown()

    def pids(self) -> list[int]:
        """Process id of every rank (for monitoring, and for tests that kill one); kept after shutdown."""
        return list(self._pids)

    def shutdown(self) -> None:
        """Stop every rank (idempotent): politely while they are healthy, else by killing them."""
        self.closed = True
        self._stop()

    # ---- per launcher ----
    @abstractmethod
    def _launch(self) -> str:
        """Start the rank processes; return the process group's init method (rendezvous address)."""

    @abstractmethod
    def _send(self, method: str, args: tuple):
        """Send a call to every rank; returns what `_receive` needs to find the answers."""

    @abstractmethod
    def _receive(self, method: str, handle, timeout: float) -> list:
        """Every rank's answer to a call sent earlier; raise RankFailedError on the first failure or after
        `timeout` seconds."""

    @abstractmethod
    def _stop(self) -> None:
        """Stop whatever rank processes are running."""

    def _alive(self) -> bool:
        return True


class MPExecutor(RankExecutor):
    """Ranks as local processes, each with a pipe to the driver; messages are pickled once and sent to all."""

    def __init__(self, parallel: ParallelConfig, specs: list[WorkerSpec]):
        super().__init__(parallel, specs)
        self.procs, self.conns = [], []  # per rank, once launched

    def _launch(self) -> str:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.procs, self.conns = [], []
        for spec in self.specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(spec, child), name=f"gptoss-rank{spec.layout.rank}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self._pids = [p.pid for p in self.procs]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    def _send(self, method: str, args: tuple) -> None:
        payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self.conns):
            try:
                conn.send_bytes(payload)
            except (BrokenPipeError, OSError):
                raise RankFailedError(self._death(rank, method)) from None

    def _receive(self, method: str, handle: None, timeout: float) -> list:
        results, pending = [None] * self.world_size, set(range(self.world_size))
        deadline = time.monotonic() + timeout
        while pending:
            waitables = {self.conns[r]: r for r in pending} | {self.procs[r].sentinel: r for r in pending}
            ready = connection.wait(list(waitables), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RankFailedError(f"ranks {sorted(pending)} did not answer {method!r} within {timeout:.0f} s "
                                      "(a hung rank, or a collective waiting on one)")
            for rank in {waitables[obj] for obj in ready}:
                results[rank] = self._answer(rank, method)
                pending.discard(rank)
        return results

    def _answer(self, rank: int, method: str):
        """Rank `rank`'s answer, which is ready (or its pipe closed, or its process exited)."""
        try:
            if not self.conns[rank].poll():  # the sentinel fired and no answer is waiting: it died
                raise EOFError
            status, value = pickle.loads(self.conns[rank].recv_bytes())
        except (EOFError, OSError):  # the pipe closed or was reset: the process is gone
            raise RankFailedError(self._death(rank, method)) from None
        if status == "error":
            log.error("rank %d failed in %r:\n%s", rank, method, value)
            dead = self._dead_ranks()
            if dead:  # a collective that failed because a peer died: the death is what to report
                raise RankFailedError(self._death(dead[0], method))
            raise RankFailedError(f"rank {rank} failed in {method!r}: {_last_line(value)}")
        return value

    def _dead_ranks(self, grace_s: float = 0.5) -> list[int]:
        """Ranks whose process has exited (waiting up to `grace_s` for one that is dying)."""
        sentinels = {p.sentinel: r for r, p in enumerate(self.procs)}
        return sorted(sentinels[s] for s in connection.wait(list(sentinels), timeout=grace_s))

    def _death(self, rank: int, method: str) -> str:
        proc = self.procs[rank]
        proc.join(0.5)
        return f"rank {rank} (pid {proc.pid}) exited with code {proc.exitcode} during {method!r}"

    def _alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def _stop(self) -> None:
        procs, self.procs = self.procs, []
        if self.error is None:
            payload = pickle.dumps(("stop", ()))
            for conn in self.conns:
                try:
                    conn.send_bytes(payload)
                except OSError:
                    pass
            for p in procs:
                p.join(5)
        for p in procs:
            if p.is_alive():
                p.kill()  # a failed group can hang in teardown; these are our own processes
            p.join(5)
        for conn in self.conns:
            conn.close()
        self.conns = []


class RayExecutor(RankExecutor):
    """Ranks as Ray actors, one per bundle of a placement group: PACK keeps them on one node when it has room,
    SPREAD puts them on different nodes. Connects to the running Ray cluster, or starts a local one. Inside a
    Serve replica that reserved bundles for its ranks (cluster/app.py) it uses those."""

    def __init__(self, parallel: ParallelConfig, specs: list[WorkerSpec]):
        super().__init__(parallel, specs)
        self.actors, self.pg, self._own_pg = [], None, False  # once launched: one actor per rank, their group

    def _launch(self) -> str:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            ray.init()
        gpu = self.specs[0].device.startswith("cuda")
        first, bundles = self._placement_group(gpu)
        for r in range(self.world_size):
            bundle = bundles[first + r]
            if gpu and bundle.get("GPU", 0) < 1:
                raise RankFailedError(f"bundle {first + r} of the placement group, {bundle}, has no GPU for rank "
                                      f"{r} of a cuda engine; give each rank's bundle one GPU")
        actor = ray.remote(max_restarts=0)(Worker)
        self.actors = [actor.options(
            num_cpus=bundles[first + r].get("CPU", 0), num_gpus=1 if gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=first + r),
        ).remote(spec.config, spec.layout, spec.device) for r, spec in enumerate(self.specs)]
        host, port = ray.get(self.actors[0].free_address.remote(), timeout=self.parallel.startup_timeout_s)
        self._pids = ray.get([a.pid.remote() for a in self.actors], timeout=self.parallel.startup_timeout_s)
        return f"tcp://{host}:{port}"

    def _placement_group(self, gpu: bool) -> tuple[int, list[dict]]:
        """Sets self.pg, the group the ranks go in; returns rank 0's bundle index and the group's bundles. Inside a
        Serve replica deployed with placement_group_bundles (the replica in bundle 0, then one per rank) that is the
        replica's group, which Serve reserved and will release; anywhere else this executor makes (and later
        removes) its own."""
        import ray
        from ray.util.placement_group import get_current_placement_group, placement_group

        current = get_current_placement_group()
        if current is not None and len(current.bundle_specs) > self.world_size:
            self.pg, self._own_pg = current, False
            return len(current.bundle_specs) - self.world_size, current.bundle_specs
        bundle = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
        self.pg, self._own_pg = placement_group([bundle] * self.world_size,
                                                strategy=self.parallel.placement_strategy), True
        try:
            ray.get(self.pg.ready(), timeout=self.parallel.startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RankFailedError(f"Ray could not place {self.world_size} bundles of {bundle} "
                                  f"({self.parallel.placement_strategy}) within {self.parallel.startup_timeout_s} s; "
                                  f"available: {ray.available_resources()}") from None
        return 0, self.pg.bundle_specs

    def _send(self, method: str, args: tuple) -> list:
        import ray

        args = tuple(ray.put(a) if not isinstance(a, (str, int, float)) else a for a in args)  # one copy for all
        return [getattr(a, method).remote(*args) for a in self.actors]

    def _receive(self, method: str, refs: list, timeout: float) -> list:
        import ray

        rank_of = {ref: r for r, ref in enumerate(refs)}
        results, pending = [None] * self.world_size, list(refs)
        deadline = time.monotonic() + timeout
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                ranks = sorted(rank_of[r] for r in pending)
                raise RankFailedError(f"ranks {ranks} did not answer {method!r} within {timeout:.0f} s "
                                      "(a hung rank, or a collective waiting on one)")
            rank = rank_of[ready[0]]
            try:
                results[rank] = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                log.error("rank %d died during %r: %s", rank, method, e)
                raise RankFailedError(f"rank {rank} (pid {self._pids[rank]}) died during {method!r}: "
                                      f"{str(e).strip().splitlines()[0]}") from None
            except ray.exceptions.RayTaskError as e:
                log.error("rank %d failed in %r:\n%s", rank, method, e)
                raise RankFailedError(f"rank {rank} failed in {method!r}: {_last_line(str(e))}") from None
        return results

    def _stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        actors, self.actors = self.actors, []
        if actors and self.error is None:
            try:
                ray.get([a.close.remote() for a in actors], timeout=10)
            except Exception:  # noqa: BLE001 - killing them below is the fallback
                pass
        for a in actors:
            ray.kill(a, no_restart=True)
        if self.pg is not None and self._own_pg:
            remove_placement_group(self.pg)
            self.pg = None


def _last_line(traceback_text: str) -> str:
    """The exception line of a traceback (the whole text is logged)."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else traceback_text


def _rank_device(device: torch.device, rank: int, backend: str) -> str:
    """The device a rank computes on, as that rank's process sees it (Ray shows each actor only its GPU)."""
    if device.type != "cuda":
        return "cpu"
    return "cuda:0" if backend == "ray" else f"cuda:{rank % torch.cuda.device_count()}"


def serve(spec: WorkerSpec, conn) -> None:
    """The body of a local (mp) rank process: answer (method, args) calls on `conn`, in order, until told to stop
    or the driver goes away. Replies are ("ok", result) or ("error", traceback text). A reader thread takes calls
    off the pipe as they arrive, so the driver never blocks sending step N+1 while this rank answers step N."""
    worker = Worker(spec.config, spec.layout, spec.device)
    calls: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_calls, args=(conn, calls), name="gptoss-rank-reader", daemon=True).start()
    while (call := calls.get()) is not None:
        method, args = pickle.loads(call)
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


def _read_calls(conn, calls: queue.SimpleQueue) -> None:
    try:
        while True:
            calls.put(conn.recv_bytes())
    except (EOFError, OSError):
        calls.put(None)  # the driver went away
