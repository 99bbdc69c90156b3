"""The gRPC gateway in the chart: pinned to the head pod by a Ray resource only the head has, reached through its
own Service, TLS files from a Secret, the port open to clients in the NetworkPolicy. Oracles: the real helm, and
the cluster's own config loader and deployment options for what the rendered serveConfigV2 asks of Ray."""

import pytest

from cluster.app import gateway_actor_options
from cluster.config import load_config
from tests.helm.chart import (
    CHART, CI, NAMESPACE, RELEASE, helm, one, ray_cluster, render, serve_config, services,
)

GRPC = CI["gpt-oss-20b-grpc-mtls"]


def test_the_gateway_runs_on_the_head_pod_behind_its_own_service():
    objs = render(GRPC)
    head = ray_cluster(objs)["headGroupSpec"]
    assert head["rayStartParams"]["resources"] == '"{\\"gptoss_grpc_gateway\\": 1}"'  # ray start --resources JSON
    grpc = next(s for s in services(objs) if s["metadata"]["name"] == f"{RELEASE}-gptoss-serve-grpc")
    assert grpc["spec"]["selector"]["app.kubernetes.io/component"] == "ray-head"
    assert head["template"]["metadata"]["labels"].items() >= grpc["spec"]["selector"].items()
    assert [(p["port"], p["targetPort"]) for p in grpc["spec"]["ports"]] == [(50051, "grpc")]
    container = head["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": 50051} in container["ports"]

    config = load_config(serve_config(objs)["applications"][0]["args"]["config"])
    assert (config.grpc.enabled, config.grpc.host, config.grpc.port) == (True, "0.0.0.0", 50051)
    assert config.grpc.node_resource == "gptoss_grpc_gateway" and config.grpc.requests_per_s == 20
    assert gateway_actor_options(config) == {"num_cpus": 0, "resources": {"gptoss_grpc_gateway": 0.001}}
    for group in ray_cluster(objs)["workerGroupSpecs"]:  # no worker offers the resource: only the head can host it
        assert "resources" not in group["rayStartParams"] and "gptoss_grpc_gateway" not in str(group)


def test_tls_and_client_certificates_come_from_the_secret():
    objs = render(GRPC)
    head = ray_cluster(objs)["headGroupSpec"]["template"]["spec"]
    assert {"name": "grpc-tls", "secret": {"secretName": "gptoss-grpc-tls", "defaultMode": 0o440}} in head["volumes"]
    mounts = head["containers"][0]["volumeMounts"]
    assert {"name": "grpc-tls", "mountPath": "/etc/gptoss/grpc-tls", "readOnly": True} in mounts
    grpc = load_config(serve_config(objs)["applications"][0]["args"]["config"]).grpc
    assert (grpc.tls_cert_file, grpc.tls_key_file, grpc.tls_client_ca_file) == (
        "/etc/gptoss/grpc-tls/tls.crt", "/etc/gptoss/grpc-tls/tls.key", "/etc/gptoss/grpc-tls/ca.crt")


def test_plaintext_without_a_secret_and_nothing_without_grpc():
    objs = render(set=["grpc.enabled=true"])
    grpc = load_config(serve_config(objs)["applications"][0]["args"]["config"]).grpc
    assert grpc.enabled and not grpc.tls
    assert "grpc-tls" not in str(ray_cluster(objs))
    objs = render()
    assert not any(s["metadata"]["name"].endswith("-grpc") for s in services(objs))
    assert "resources" not in ray_cluster(objs)["headGroupSpec"]["rayStartParams"]
    assert not load_config(serve_config(objs)["applications"][0]["args"]["config"]).grpc.enabled


def test_the_network_policy_opens_the_grpc_port_to_api_clients_only():
    policy = one(render(GRPC), "NetworkPolicy")
    opened = [{p["port"] for p in rule.get("ports", [])} for rule in policy["spec"]["ingress"]]
    assert {8000, 50051} in opened and all(50051 not in ports for ports in opened if ports != {8000, 50051})


@pytest.mark.parametrize("notes_has", ["-grpc.", "TLS with client certificates"])
def test_notes_say_how_to_reach_the_grpc_api(notes_has):
    out = helm("install", RELEASE, str(CHART), "--dry-run=client", "-f", str(GRPC), "--namespace", NAMESPACE)
    assert out.returncode == 0, out.stderr
    assert notes_has in out.stdout.split("NOTES:")[-1]
