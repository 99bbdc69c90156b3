"""The built-in fault actions: each acts on a gptoss-serve application running on a Ray cluster on this machine.

Flow: an action connects this process to the Ray cluster (`FaultContext.ray_address`) as a driver, finds its target
through Ray and Serve (named replica actors `SERVE_REPLICA::<app>#<deployment>#<id>` in the `serve` namespace, their
pid and node asked of the actor itself, an engine's rank processes as the replica's spawned children, a node's raylet
by its socket), acts, and returns what it did. Planned operations wait until Serve runs the new state.

    unplanned  kill_replica, kill_ingress, kill_gateway   SIGKILL (or `signal`) one replica's process
               kill_rank, stop_rank                       SIGKILL / SIGSTOP one engine rank (`parallel.backend: mp`)
               kill_raylet                                SIGKILL a worker node's raylet (a second `ray start` here)
    planned    redeploy                                   serve.run with config changes (`set`): a rolling upgrade
               scale_down                                 serve.run with `replicas` replicas per model
               drain_node                                 ask the GCS to drain a worker node; Serve moves its replicas

Signals reach processes on this machine only: the actions are for local clusters (a test or `make chaos`).
"""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import yaml

from loadtest.faults import Action, FaultContext, register

SERVE_NAMESPACE = "serve"
READY_TIMEOUT_S = 240.0   # how long a planned operation may take before the action reports failure


# ---- finding things --------------------------------------------------------------------------------------------


def connect(ctx: FaultContext) -> None:
    import ray  # noqa: PLC0415 - only when an action runs

    if not ray.is_initialized():
        ray.init(address=ctx.ray_address, namespace="gptoss-loadtest", log_to_driver=False, configure_logging=False)


def replica_names(app: str, deployment: str) -> list[str]:
    """Names of the live replica actors of `deployment` (exact, or a prefix such as LLMServer) in `app`, sorted."""
    import ray  # noqa: PLC0415

    prefix = f"SERVE_REPLICA::{app}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(prefix)]
    matching = [n for n in names if n[len(prefix):].rsplit("#", 1)[0] == deployment
                or n[len(prefix):].startswith(deployment)]
    return sorted(matching)


def replica_info(name: str) -> dict:
    """{"replica", "pid", "node_id"} of a replica actor, asked of the actor itself."""
    import ray  # noqa: PLC0415

    actor = ray.get_actor(name, namespace=SERVE_NAMESPACE)
    pid, node = ray.get(actor.__ray_call__.remote(_where), timeout=30)
    return {"replica": name, "pid": pid, "node_id": node}


def _where(_actor) -> tuple[int, str]:
    import ray  # noqa: PLC0415

    return os.getpid(), ray.get_runtime_context().get_node_id()


def pick_replica(ctx: FaultContext, deployment: str, index: int, node_id: str | None = None) -> dict:
    """The `index`-th (mod the count) live replica of `deployment`, optionally only those on `node_id`."""
    infos = [replica_info(n) for n in replica_names(ctx.app_name, deployment)]
    infos = [i for i in infos if node_id is None or i["node_id"] == node_id]
    if not infos:
        raise RuntimeError(f"no live replica of {deployment!r} in application {ctx.app_name!r}"
                           + (f" on node {node_id}" if node_id else ""))
    return infos[index % len(infos)]


def rank_pids(replica_pid: int) -> list[int]:
    """The engine's rank processes of a replica (mp backend): its children started by multiprocessing's spawn,
    in start order (rank order)."""
    import psutil  # noqa: PLC0415 - a Ray dependency

    children = psutil.Process(replica_pid).children()
    ranks = [c for c in children if "spawn_main" in " ".join(_cmdline(c))]
    return [c.pid for c in sorted(ranks, key=lambda c: (c.create_time(), c.pid))]


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # noqa: BLE001 - it exited meanwhile
        return []


def worker_node(ctx: FaultContext, node: str | None) -> dict:
    """A live non-head Ray node: by id or custom resource name when given, else the first that runs an LLM replica
    of the application (else the first)."""
    import ray  # noqa: PLC0415

    nodes = [n for n in ray.nodes() if n["Alive"] and not n["Resources"].get("node:__internal_head__")]
    if node:
        nodes = [n for n in nodes if n["NodeID"] == node or node in n["Resources"]]
    if not nodes:
        raise RuntimeError("no live worker node" + (f" matching {node!r}" if node else "") +
                           " (start one: ray start --address GCS_ADDRESS --resources ...)")
    serving = set(_replica_nodes(ctx, "LLMServer"))
    return next((n for n in nodes if n["NodeID"] in serving), nodes[0])


def raylet_pid(node: dict) -> int:
    import psutil  # noqa: PLC0415

    socket = node["RayletSocketName"]
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if "raylet" in (proc.info["name"] or "") and f"--raylet_socket_name={socket}" in cmd:
            return proc.pid
    raise RuntimeError(f"no raylet process with socket {socket} on this machine")


def send(pid: int, signame: str) -> None:
    os.kill(pid, getattr(signal, signame))


# ---- unplanned ---------------------------------------------------------------------------------------------------


@register
class KillReplica(Action):
    """Sends `signal` (default SIGKILL) to the process of replica `replica` of `deployment`."""

    name, planned, default_deployment = "kill_replica", False, "LLMServer"

    def __init__(self, ctx: FaultContext, deployment: str | None = None, replica: int = 0,
                 signal: str = "SIGKILL") -> None:
        super().__init__(ctx)
        self.deployment, self.replica, self.signal = deployment or self.default_deployment, int(replica), signal
        _check_signal(signal)

    def run(self) -> dict:
        connect(self.ctx)
        info = pick_replica(self.ctx, self.deployment, self.replica)
        send(info["pid"], self.signal)
        return info | {"signal": self.signal}


@register
class KillIngress(KillReplica):
    """SIGKILL one HTTP ingress replica (in-flight HTTP streams through it break: the Serve proxy holds them)."""

    name, default_deployment = "kill_ingress", "Ingress"


@register
class KillGateway(KillReplica):
    """SIGKILL the gRPC gateway's replica (its server and every gRPC stream on it go away)."""

    name, default_deployment = "kill_gateway", "GrpcGateway"


@register
class KillRank(Action):
    """Sends `signal` (default SIGKILL) to engine rank `rank` of one LLM replica (parallel.backend mp). With
    `resume_after_s` (for SIGSTOP), SIGCONT follows after that many seconds."""

    name, planned, default_signal = "kill_rank", False, "SIGKILL"

    def __init__(self, ctx: FaultContext, rank: int = 1, replica: int = 0, deployment: str = "LLMServer",
                 signal: str | None = None, resume_after_s: float | None = None) -> None:
        super().__init__(ctx)
        self.rank, self.replica, self.deployment = int(rank), int(replica), deployment
        self.signal, self.resume_after_s = signal or self.default_signal, resume_after_s
        _check_signal(self.signal)

    def run(self) -> dict:
        connect(self.ctx)
        info = pick_replica(self.ctx, self.deployment, self.replica)
        pids = rank_pids(info["pid"])
        if self.rank >= len(pids):
            raise RuntimeError(f"replica {info['replica']} has {len(pids)} rank processes, no rank {self.rank} "
                               "(rank faults need a model with parallel.backend mp and several ranks)")
        send(pids[self.rank], self.signal)
        if self.resume_after_s is not None:
            time.sleep(float(self.resume_after_s))
            _continue(pids[self.rank])
        return info | {"rank": self.rank, "rank_pid": pids[self.rank], "signal": self.signal}


@register
class StopRank(KillRank):
    """SIGSTOP one engine rank: it hangs without exiting; the engine notices at its collective timeout."""

    name, default_signal = "stop_rank", "SIGSTOP"


@register
class KillRaylet(Action):
    """SIGKILL the raylet of a worker node (`node`: its id or a custom resource it has; default the first)."""

    name, planned = "kill_raylet", False

    def __init__(self, ctx: FaultContext, node: str | None = None) -> None:
        super().__init__(ctx)
        self.node = node

    def run(self) -> dict:
        connect(self.ctx)
        node = worker_node(self.ctx, self.node)
        pid = raylet_pid(node)
        running = _replicas_on(self.ctx, node["NodeID"])
        send(pid, "SIGKILL")
        return {"node_id": node["NodeID"], "raylet_pid": pid, "replicas": running}


# ---- planned -----------------------------------------------------------------------------------------------------


@register
class Redeploy(Action):
    """A rolling upgrade: the application's config with `set` applied ({"models.0.engine.max_num_seqs": 32}: dotted
    paths, list indices as numbers) deployed with serve.run; returns when Serve runs it with every replica up."""

    name, planned = "redeploy", True

    def __init__(self, ctx: FaultContext, set: dict | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        super().__init__(ctx)
        if ctx.serve_config is None:
            raise ValueError(f"{self.name} needs the application's config file (--serve-config)")
        self.changes, self.timeout_s = dict(set or {}), float(timeout_s)
        apply_changes(copy.deepcopy(_base_config(ctx)), self.changes)  # bad paths fail before the run

    def run(self) -> dict:
        connect(self.ctx)
        config = apply_changes(copy.deepcopy(_base_config(self.ctx)), self.changes)
        deploy(self.ctx, config, self.timeout_s)
        return {"changes": self.changes}


@register
class ScaleDown(Redeploy):
    """Every model to `replicas` fixed replicas (autoscaling off), deployed as `redeploy` does."""

    name = "scale_down"

    def __init__(self, ctx: FaultContext, replicas: int = 1, timeout_s: float = READY_TIMEOUT_S) -> None:
        models = _base_config(ctx)["models"] if ctx.serve_config else []
        changes = {f"models.{i}.{k}": v for i in range(len(models))
                   for k, v in (("num_replicas", int(replicas)), ("autoscaling", None))}
        super().__init__(ctx, set=changes, timeout_s=timeout_s)


@register
class DrainNode(Action):
    """Asks the GCS to drain a worker node (as the autoscaler does before removing one; `deadline_s` until it would
    be killed) and waits until no replica of the application runs there and the application is RUNNING."""

    name, planned = "drain_node", True

    def __init__(self, ctx: FaultContext, node: str | None = None, deadline_s: int = 120,
                 timeout_s: float = READY_TIMEOUT_S) -> None:
        super().__init__(ctx)
        self.node, self.deadline_s, self.timeout_s = node, int(deadline_s), float(timeout_s)

    def run(self) -> dict:
        import ray  # noqa: PLC0415
        from ray.core.generated import autoscaler_pb2  # noqa: PLC0415

        connect(self.ctx)
        node = worker_node(self.ctx, self.node)
        running = _replicas_on(self.ctx, node["NodeID"])
        gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
        deadline_ms = time.time_ns() // 1_000_000 + self.deadline_s * 1000
        accepted, why = gcs.drain_node(node["NodeID"], autoscaler_pb2.DrainNodeReason.Value(
            "DRAIN_NODE_REASON_PREEMPTION"), "gptoss loadtest drain_node", deadline_ms)
        if not accepted:
            raise RuntimeError(f"the GCS refused to drain node {node['NodeID']}: {why}")
        moved = wait_until(lambda: node["NodeID"] not in _replica_nodes(self.ctx, "") and app_running(self.ctx),
                           self.timeout_s, f"the replicas to leave node {node['NodeID']}")
        return {"node_id": node["NodeID"], "replicas": running, "waited_s": moved}


# ---- helpers -----------------------------------------------------------------------------------------------------


def _check_signal(name: str) -> None:
    if not isinstance(getattr(signal, str(name), None), signal.Signals):
        raise ValueError(f"signal must be a signal name such as SIGKILL or SIGSTOP, got {name!r}")


def _continue(pid: int) -> None:
    try:
        send(pid, "SIGCONT")
    except ProcessLookupError:
        pass


def _base_config(ctx: FaultContext) -> dict:
    """The config deployed last by an action, else the application's config file."""
    if ctx.deployed is None:
        ctx.deployed = yaml.safe_load(Path(ctx.serve_config).read_text())
    return ctx.deployed


def apply_changes(config: dict, changes: dict) -> dict:
    """`config` with each dotted path set (models.0.engine.max_num_seqs); a missing step raises ValueError."""
    for path, value in changes.items():
        node, steps = config, str(path).split(".")
        for step in steps[:-1]:
            key = int(step) if isinstance(node, list) else step
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"set: {path!r} does not exist in the application's config") from None
        last = int(steps[-1]) if isinstance(node, list) else steps[-1]
        node[last] = value
    return config


def deploy(ctx: FaultContext, config: dict, timeout_s: float) -> None:
    """serve.run of `config` as the same application (Serve rolls the changed deployments), then wait for it."""
    from ray import serve  # noqa: PLC0415

    from cluster.app import build_app  # noqa: PLC0415 - the application's own builder
    from cluster.config import load_config  # noqa: PLC0415

    config = {**config, "name": ctx.app_name}
    prefix = load_config(copy.deepcopy(config)).http.route_prefix
    serve.run(build_app({"config": config}), name=ctx.app_name, route_prefix=prefix)
    ctx.deployed = config
    wait_until(lambda: app_running(ctx), timeout_s, f"application {ctx.app_name!r} to run the new config")


def app_running(ctx: FaultContext) -> bool:
    """The application RUNNING with every deployment HEALTHY and every replica RUNNING (none starting or stopping)."""
    from ray import serve  # noqa: PLC0415

    app = serve.status().applications.get(ctx.app_name)
    if app is None or _name(app.status) != "RUNNING":
        return False
    return all(_name(d.status) == "HEALTHY" and {_name(s) for s in d.replica_states} <= {"RUNNING"}
               for d in app.deployments.values())


def _name(status) -> str:
    """A Serve status enum's value ("RUNNING"), whatever str() of the enum says."""
    return str(getattr(status, "value", status))


def _replicas_on(ctx: FaultContext, node_id: str) -> list[str]:
    """The application's live replicas on `node_id` (deployment#id, without the app prefix)."""
    out = []
    for name in replica_names(ctx.app_name, ""):
        try:
            if replica_info(name)["node_id"] == node_id:
                out.append(name.split("#", 1)[1])
        except Exception:  # noqa: BLE001 - stopping or gone
            continue
    return out


def _replica_nodes(ctx: FaultContext, deployment: str) -> list[str]:
    """The node of every live replica of `deployment` ("" for all) in the application."""
    out = []
    for name in replica_names(ctx.app_name, deployment):
        try:
            out.append(replica_info(name)["node_id"])
        except Exception:  # noqa: BLE001 - stopping or gone
            continue
    return out


def wait_until(ready, timeout_s: float, what: str) -> float:
    """Polls `ready()` every 0.5 s; returns the seconds waited, or raises TimeoutError naming `what`."""
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.5)
    return time.monotonic() - start
