"""Executors: start one process per rank and call the same method on every rank, failing loudly and in bounded
time. `MPExecutor` runs local processes (torch.multiprocessing, spawn); `RayExecutor` runs Ray actors in a
placement group (one bundle per rank). Both answer `call(method, *args)` with one result per rank, or raise
`RankFailedError` naming the rank and what happened (an exception with its traceback, a process that died, or
no answer in time), after which the executor is dead: every rank is stopped and later calls raise at once.
"""

import logging
import pickle
import socket
import time
from abc import ABC, abstractmethod
from multiprocessing import connection

from engine.config import ParallelConfig
from engine.parallel.worker import LoadReport, WorkerSpec, serve

log = logging.getLogger(__name__)


class RankFailedError(RuntimeError):
    """A rank raised, died or stopped answering; the engine cannot continue."""


class Executor(ABC):
    def __init__(self, parallel: ParallelConfig, specs: list[WorkerSpec]):
        self.parallel, self.specs = parallel, specs
        self.world_size = len(specs)
        self.error: RankFailedError | None = None
        self.closed = False
        self._pids: list[int] = []

    # ---- the interface ----
    def start(self) -> list[LoadReport]:
        """Start every rank, join the process group and load the shards; one report per rank."""
        try:
            init_method = self._launch()
            return self.call("start", init_method, timeout=self.parallel.startup_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def call(self, method: str, *args, timeout: float | None = None) -> list:
        """Run `method(*args)` on every rank; their results in rank order."""
        if self.error is not None:
            raise RankFailedError(f"the executor failed earlier: {self.error}")
        timeout = self.parallel.collective_timeout_s + 10 if timeout is None else timeout
        try:
            return self._call(method, args, timeout)
        except RankFailedError as e:
            self.error = e
            log.error("%s; stopping every rank", e)
            self.shutdown()
            raise

    @property
    def healthy(self) -> bool:
        return self.error is None and not self.closed and self._alive()

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
    def _call(self, method: str, args: tuple, timeout: float) -> list:
        """Call on every rank; raise RankFailedError on the first failure or after `timeout` seconds."""

    @abstractmethod
    def _stop(self) -> None:
        """Stop whatever rank processes are running."""

    def _alive(self) -> bool:
        return True


class MPExecutor(Executor):
    """Ranks as local processes, each with a pipe to the driver; messages are pickled once and sent to all."""

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

    def _call(self, method: str, args: tuple, timeout: float) -> list:
        payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self.conns):
            try:
                conn.send_bytes(payload)
            except (BrokenPipeError, OSError):
                raise RankFailedError(self._death(rank, method)) from None
        results, pending = [None] * self.world_size, set(range(self.world_size))
        deadline = time.monotonic() + timeout
        while pending:
            waitables = {self.conns[r]: r for r in pending} | {self.procs[r].sentinel: r for r in pending}
            ready = connection.wait(list(waitables), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RankFailedError(f"ranks {sorted(pending)} did not answer {method!r} within {timeout:.0f} s "
                                      "(a hung rank, or a collective waiting on one)")
            for rank in {waitables[obj] for obj in ready}:
                results[rank] = self._receive(rank, method)
                pending.discard(rank)
        return results

    def _receive(self, rank: int, method: str):
        """Rank `rank`'s answer, which is ready (or its pipe closed, or its process exited)."""
        try:
            if not self.conns[rank].poll():  # the sentinel fired and no answer is waiting: it died
                raise EOFError
            status, value = pickle.loads(self.conns[rank].recv_bytes())
        except (EOFError, OSError):  # the pipe closed or was reset: the process is gone
            raise RankFailedError(self._death(rank, method)) from None
        if status == "error":
            log.error("rank %d failed in %r:\n%s", rank, method, value)
            raise RankFailedError(f"rank {rank} failed in {method!r}: {_last_line(value)}")
        return value

    def _death(self, rank: int, method: str) -> str:
        proc = self.procs[rank]
        proc.join(0.5)
        return f"rank {rank} (pid {proc.pid}) exited with code {proc.exitcode} during {method!r}"

    def _alive(self) -> bool:
        return all(p.is_alive() for p in getattr(self, "procs", []))

    def _stop(self) -> None:
        procs, self.procs = getattr(self, "procs", []), []
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
        for conn in getattr(self, "conns", []):
            conn.close()
        self.conns = []


class RayExecutor(Executor):
    """Ranks as Ray actors, one per bundle of a placement group: PACK keeps them on one node when it has room,
    SPREAD puts them on different nodes. Connects to the running Ray cluster, or starts a local one. Inside a
    Serve replica that reserved bundles for its ranks (cluster/app.py) it uses those."""

    def _launch(self) -> str:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from engine.parallel.worker import Worker

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
        ).remote(spec) for r, spec in enumerate(self.specs)]
        host, port = ray.get(self.actors[0].free_address.remote(), timeout=self.parallel.startup_timeout_s)
        self._pids = ray.get([a.pid.remote() for a in self.actors], timeout=self.parallel.startup_timeout_s)
        return f"tcp://{host}:{port}"

    def _placement_group(self, gpu: bool) -> tuple[int, list[dict]]:
        """Sets self.pg, the group the ranks go in; returns rank 0's bundle index and the group's bundles. Inside a Serve replica deployed with
        placement_group_bundles (the replica in bundle 0, then one per rank) that is the replica's group, which
        Serve reserved and will release; anywhere else this executor makes (and later removes) its own."""
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

    def _call(self, method: str, args: tuple, timeout: float) -> list:
        import ray

        args = tuple(ray.put(a) if not isinstance(a, (str, int, float)) else a for a in args)  # one copy for all
        refs = [getattr(a, method).remote(*args) for a in self.actors]
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

        actors, self.actors = getattr(self, "actors", []), []
        if actors and self.error is None:
            try:
                ray.get([a.close.remote() for a in actors], timeout=10)
            except Exception:  # noqa: BLE001 - killing them below is the fallback
                pass
        for a in actors:
            ray.kill(a, no_restart=True)
        if getattr(self, "pg", None) is not None and self._own_pg:
            remove_placement_group(self.pg)
            self.pg = None


def _last_line(traceback_text: str) -> str:
    """The exception line of a traceback (the whole text is logged)."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else traceback_text


def make_executor(parallel: ParallelConfig, specs: list[WorkerSpec]) -> Executor:
    return {"mp": MPExecutor, "ray": RayExecutor}[parallel.distributed_executor_backend](parallel, specs)
