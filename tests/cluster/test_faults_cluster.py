"""Fault actions against the running application under open-loop load (loadtest/cluster_actions.py), counted by the
load tester's accounting: a killed LLM replica loses nothing (streams in flight end with a clear error, requests
without a first token are retried), and a rolling upgrade of an engine setting costs nothing at all, on HTTP and
gRPC (the front doors restart too, one of two at a time: the gateway's two replicas share its port)."""

import yaml
import pytest

from loadtest import runner
from loadtest.config import RunConfig
from loadtest.faults import FaultContext
from loadtest.metrics import Slo
from loadtest.workload import WorkloadSpec
from tests.cluster.conftest import free_port, model_entry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(serve_app, tiny_model, tmp_path_factory):
    """Two LLM replicas (surge on upgrade), the gateway; the config as deployed, in a file for the redeploy."""
    grpc_port = free_port()
    config = {"models": [model_entry("tiny", tiny_model, num_replicas=2, max_surge_percent=100,
                                     health_check_period_s=1)],
              "grpc": {"enabled": True, "port": grpc_port, "replicas": 2, "replicas_per_node": 2},
              "ingress_replicas": 2,
              "responses": {"store_path": str(tmp_path_factory.mktemp("store") / "r.sqlite3")}}
    base = serve_app(config, "faults")
    deployed = {**config, "name": "faults", "http": {"route_prefix": "/faults"}, "metrics_push_interval_s": 0.25}
    path = tmp_path_factory.mktemp("config") / "app.yaml"
    path.write_text(yaml.safe_dump(deployed))
    return f"{base},grpc://127.0.0.1:{grpc_port}", FaultContext(app_name="faults", serve_config=str(path))


def run(urls: str, ctx: FaultContext, faults: list, seconds: float = 24.0, api: str = "chat"):
    config = RunConfig(url=urls, model="tiny", api=api, rate=1.5, duration_s=seconds, arrival="constant",
                       workload=WorkloadSpec(input_len="16", output_len="24"), ignore_eos=True, tokenizer="words",
                       progress=False, request_timeout_s=90, faults=faults, fault_context=ctx, slo=Slo())
    return runner.run(config).points[0]


def test_a_killed_replica_loses_nothing(app):
    urls, ctx = app
    point = run(urls, ctx, [{"at": 6, "action": "kill_replica", "name": "kill"}])
    (fault,) = point.summary["faults"]
    assert not fault["error"] and fault["detail"]["pid"] > 0
    assert fault["outcomes"]["lost"] == 0 and point.summary["outcomes"]["lost"] == 0
    failed = [r for r in point.records if r.outcome == "failed"]
    # only streams that had their first token on the killed replica fail, and they say why
    assert all(r.accepted == r.accepted and "replica" in r.error for r in failed), [r.error for r in failed]
    assert point.summary["outcomes"]["completed"] >= len(point.records) - len(failed)
    assert {"http-chat", "grpc-chat"} <= {r.target for r in point.records if r.outcome == "completed"}


def test_a_rolling_upgrade_costs_nothing(app):
    urls, ctx = app
    point = run(urls, ctx, [{"at": 4, "action": "redeploy", "set": {"models.0.engine.max_num_seqs": 12},
                             "name": "upgrade"}], seconds=30, api="completions")
    (fault,) = point.summary["faults"]
    assert not fault["error"], fault["error"]
    assert point.summary["outcomes"] | {"completed": 0} == {"completed": 0, "rejected": 0, "failed": 0, "lost": 0,
                                                            "rejected_without_retry_hint": 0}, \
        [(r.target, round(r.scheduled, 1), r.error) for r in point.records if r.outcome != "completed"]
    assert {r.target for r in point.records} == {"http-completions", "grpc-completions"}
