"""The standard fault campaign (`make chaos`): faults under open-loop load on a local cluster, every request counted.

    python -m bench.chaos [--phases planned,unplanned,ranks,nodes,overload] [--spacing 60] [--load 0.7]

One local Ray cluster of its own (its own temp dir and ports; nothing else on the machine is touched), running
`make serve`'s config (cluster/configs/local.yaml: the tiny model, HTTP and gRPC) with 2 fixed replicas. Per phase:
deploy, measure capacity (closed loop, `--capacity-s`), then `gptoss loadtest run` at `--load` x capacity with half
the requests over HTTP and half over gRPC and a fault schedule (loadtest/faults.py):
  planned    redeploy with a changed engine setting (a rolling upgrade), then scale 2 -> 1
  unplanned  SIGKILL an LLM replica, the HTTP ingress replica, the gRPC gateway replica
  ranks      the same model with tensor parallel 2 on the mp backend: SIGKILL one rank, SIGSTOP one rank
  nodes      two more local Ray nodes (`ray start`-style raylets on this machine, 1 CPU each): drain the one that
             runs an LLM replica (planned: Serve moves it first), then SIGKILL the raylet of one that runs one
  overload   3x capacity for `--overload-s` (no faults): every rejection must carry a retry hint, the admitted
             requests keep p99 TTFT within the SLO
Writes bench/results/chaos.json (every phase's summary and per-fault report) and chaos.md (the tables), and each
phase's full result (result.json, requests.csv, timeline.png) under bench/results/chaos/<phase>/.
"""

import argparse
import copy
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LOCAL_CONFIG = ROOT / "cluster" / "configs" / "local.yaml"
APP = "chaos"
WORKLOAD = {"input_len": "uniform:32:128", "output_len": "32"}
TP2 = {"tensor_parallel_size": 2, "enable_expert_parallel": True, "distributed_executor_backend": "mp",
       "collective_timeout_s": 10}


def schedule(phase: str, spacing: float) -> list[dict]:
    """The phase's faults, `spacing` seconds apart after a first `spacing` of undisturbed load (the baseline); the
    planned operations 2/3 of that apart (they take their own time, and cost nothing to recover from)."""
    faults = {
        "planned": [{"action": "redeploy", "set": {"models.0.engine.max_num_seqs": 48}, "name": "rolling upgrade"},
                    {"action": "scale_down", "replicas": 1, "name": "scale 2->1"}],
        "unplanned": [{"action": "kill_replica", "name": "replica SIGKILL"},
                      {"action": "kill_ingress", "name": "ingress SIGKILL"},
                      {"action": "kill_gateway", "name": "gateway SIGKILL"}],
        "ranks": [{"action": "kill_rank", "rank": 1, "name": "rank SIGKILL"},
                  {"action": "stop_rank", "rank": 1, "name": "rank SIGSTOP"}],
        "nodes": [{"action": "drain_node", "name": "node drain"},
                  {"action": "kill_raylet", "name": "raylet SIGKILL"}],
    }.get(phase, [])
    gap = spacing * 2 / 3 if phase == "planned" else spacing  # (nodes: the drain's replacement needs the time)
    return [f | {"at": gap * (i + 1)} for i, f in enumerate(faults)]


def app_config(phase: str, http_port: int, grpc_port: int, store: Path, slo_ttft_ms: float) -> dict:
    """`make serve`'s config on this cluster's ports with 2 fixed LLM replicas, 2 ingress and 2 gateway replicas
    (sharing the gRPC port), a surge of new replicas before old ones stop on a rolling upgrade, admission control at
    half the TTFT SLO, and a health check every 2 s (the ranks phase: tensor parallel 2 on the mp backend)."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config |= {"name": APP, "http": {"host": "127.0.0.1", "port": http_port}, "ingress_replicas": 2,
               "grpc": {**config["grpc"], "port": grpc_port, "replicas": 2, "replicas_per_node": 2},
               "responses": {"store_path": str(store)}}
    model = config["models"][0]
    model |= {"path": str((ROOT / model["path"]).resolve()), "num_replicas": 2, "autoscaling": None,
              "graceful_shutdown_timeout_s": 30, "health_check_period_s": 2, "max_surge_percent": 100,
              "max_queue_wait_s": slo_ttft_ms / 2e3}
    if phase == "ranks":
        model |= {"parallel": TP2, "num_cpus": 0.5}
    return config


class LocalCluster:
    """A Ray cluster of this process's own (RAY_TMPDIR set to a temp dir first, so no file of another cluster on
    this machine is read or written), with Serve's HTTP proxy on a free port. 4 logical CPUs on the 2 cores: room
    for the rolling upgrade's surge replicas."""

    def __init__(self, num_cpus: int = 4):
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="/tmp/gptc")
        os.makedirs(Path(os.environ["RAY_TMPDIR"]) / "ray")
        import ray  # noqa: PLC0415
        from ray import serve  # noqa: PLC0415
        from ray.cluster_utils import Cluster  # noqa: PLC0415

        from tests.cluster.conftest import free_port  # noqa: PLC0415

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": num_cpus, "include_dashboard": False, "temp_dir": str(Path(os.environ["RAY_TMPDIR"]) / "ray")})
        ray.init(address=self.cluster.address, log_to_driver=False, configure_logging=False)
        self.http_port, self.grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.http_port}, proxy_location="HeadOnly")

    def add_workers(self, count: int) -> None:
        """`count` more nodes of 1 CPU each on this machine (their own raylets), once."""
        while len(self.cluster.worker_nodes) < count:
            self.cluster.add_node(num_cpus=1, resources={f"chaos_node_{len(self.cluster.worker_nodes)}": 1})

    def deploy(self, config: dict) -> None:
        from ray import serve  # noqa: PLC0415

        from cluster.app import build_from_config  # noqa: PLC0415
        from cluster.config import load_config  # noqa: PLC0415
        from tests.cluster.conftest import wait_healthy  # noqa: PLC0415

        serve.run(build_from_config(load_config(copy.deepcopy(config))), name=APP, route_prefix="/")
        wait_healthy(f"http://127.0.0.1:{self.http_port}", timeout=300)

    def close(self) -> None:
        import ray  # noqa: PLC0415
        from ray import serve  # noqa: PLC0415

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()   # every node's processes, a killed raylet's node included


def run_config(urls: str, rate: float | None, duration: float, slo_ttft_ms: float, faults: list, context,
               concurrency: int | None = None):
    from loadtest.config import RunConfig  # noqa: PLC0415
    from loadtest.metrics import Slo  # noqa: PLC0415
    from loadtest.workload import WorkloadSpec  # noqa: PLC0415

    return RunConfig(url=urls, model="tiny", api="completions", rate=rate, concurrency=concurrency,
                     duration_s=duration,
                     workload=WorkloadSpec(**WORKLOAD), slo=Slo(ttft_ms=slo_ttft_ms), request_timeout_s=120,
                     ignore_eos=True, faults=faults, fault_context=context, progress=False, tokenizer="auto",
                     recovery_window_s=5.0)


def measure_capacity(urls: str, seconds: float, concurrency: int) -> dict:
    """Completed requests/s at a fixed concurrency (closed loop): the cluster's capacity for this workload."""
    from loadtest import runner  # noqa: PLC0415

    point = runner.run(run_config(urls, None, seconds, 1e9, [], None, concurrency=concurrency)).points[0]
    s = point.summary
    return {"concurrency": concurrency, "rps": s["request_throughput_rps"], "ttft_p50_ms": s["ttft_ms"]["p50"],
            "ttft_p99_ms": s["ttft_ms"]["p99"], "outcomes": s["outcomes"]}


def run_phase(phase: str, cluster: LocalCluster, args, store: Path) -> dict:
    from loadtest import report, runner  # noqa: PLC0415
    from loadtest.faults import FaultContext  # noqa: PLC0415
    from loadtest.plots import write_plots  # noqa: PLC0415

    config = app_config(phase, cluster.http_port, cluster.grpc_port, store, args.slo_ttft_ms)
    out = RESULTS / "chaos" / phase
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"[{phase}] deploying ...", flush=True)
    if phase == "nodes":
        cluster.add_workers(2)
    cluster.deploy(config)
    urls = f"http://127.0.0.1:{cluster.http_port},grpc://127.0.0.1:{cluster.grpc_port}"
    capacity = measure_capacity(urls, args.capacity_s, args.capacity_concurrency)
    factor = args.overload if phase == "overload" else args.load
    rate = round(max(0.2, capacity["rps"] * factor), 2)
    slo = args.slo_ttft_ms
    faults = schedule(phase, args.spacing)
    duration = args.overload_s if phase == "overload" else (faults[-1]["at"] if faults else 0) + args.spacing
    print(f"[{phase}] capacity {capacity['rps']:.2f} req/s -> {rate} req/s for {duration:g} s, TTFT SLO {slo:.0f} ms, "
          f"{len(faults)} faults", flush=True)
    context = FaultContext(ray_address=cluster.cluster.address, app_name=APP, serve_config=str(out / "app.yaml"))
    run = runner.run(run_config(urls, rate, duration, slo, faults, context))
    result = report.build_result(run)
    report.write_json(result, out / "result.json")
    report.write_csv(run, out / "requests.csv")
    write_plots(result, out)
    print(report.table(result), flush=True)
    point = result["points"][0]
    summary = _summary(point["summary"])
    return {"phase": phase, "capacity": capacity, "rate_rps": rate, "load_factor": factor, "duration_s": duration,
            "slo_ttft_ms": slo, "summary": summary, "faults": point["summary"].get("faults", []),
            "targets": overload_targets(summary, slo) if phase == "overload" else {}, "warnings": result["warnings"]}


def overload_targets(summary: dict, slo_ttft_ms: float) -> dict[str, bool]:
    """Overload: nothing lost, every refusal with a retry hint, the admitted (completed) within the TTFT SLO."""
    o, p99 = summary["outcomes"], summary["ttft_ms"]["p99"]
    return {"0 lost": o["lost"] == 0, "every rejection has a retry hint": o["rejected_without_retry_hint"] == 0,
            f"admitted p99 TTFT <= {slo_ttft_ms:g} ms": p99 is not None and p99 <= slo_ttft_ms}


def _summary(s: dict) -> dict:
    keep = ("requests", "completed", "failed", "errors", "outcomes", "request_throughput_rps", "goodput_rps",
            "good_fraction")
    return {k: s[k] for k in keep} | {"ttft_ms": {q: s["ttft_ms"][q] for q in ("p50", "p99")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="planned,unplanned,ranks,nodes,overload")
    parser.add_argument("--spacing", type=float, default=60.0, help="seconds between unplanned faults (and before the "
                                                                    "first, and after the last): the recovery window")
    parser.add_argument("--load", type=float, default=0.7, help="offered load as a fraction of measured capacity")
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--capacity-s", type=float, default=15.0)
    parser.add_argument("--capacity-concurrency", type=int, default=8)
    parser.add_argument("--slo-ttft-ms", type=float, default=10000.0,
                        help="the run's TTFT SLO (this shared 2-core machine: seconds); admission at half of it")
    args = parser.parse_args()
    load = [round(os.getloadavg()[0], 2)]
    cluster = LocalCluster()
    phases = []
    try:
        with tempfile.TemporaryDirectory(prefix="gptc-store") as tmp:
            for phase in args.phases.split(","):
                phases.append(run_phase(phase, cluster, args, Path(tmp) / f"{phase}.sqlite3"))
    finally:
        cluster.close()
    load.append(round(os.getloadavg()[0], 2))
    write(phases, args, load)


def write(phases: list[dict], args, load: list[float]) -> None:
    from bench.chaos_report import markdown  # noqa: PLC0415

    result = {"bench": "chaos", "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1m_before_after": load},
              "args": vars(args), "workload": WORKLOAD, "phases": phases}
    (RESULTS / "chaos.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "chaos.md").write_text(markdown(result))
    print(f"wrote {RESULTS / 'chaos.json'} and {RESULTS / 'chaos.md'}", flush=True)


if __name__ == "__main__":
    main()
