"""The chart rendered by the real helm: lint, strict schema validation, and what the objects must say.

Values: the defaults and every file under helm/gptoss-serve/ci/. Oracles: `helm lint --strict`; the Kubernetes
1.30 OpenAPI schemas in strict mode (kubernetes-validate), also for the pod templates and the Service inside the
RayService; the operators' CRD schemas (../shared/data/crds/) with unknown fields rejected.
"""

import functools
import json

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART, CI, CI_VALUES, CRD_DIR, NAMESPACE, RAY_DASHBOARD_PORT, RAY_GCS_PORT, RELEASE, Loader, helm, of_kind, one,
    pod_templates, ray_cluster, render, serve_config, services, values_id,
)

VALUES = [None, *CI_VALUES]
K8S_VERSION = "1.30.0"
CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}


def objects(values):
    return render(*([values] if values else []))


# -- lint and schemas -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_lint_strict(values):
    proc = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_builtin_kinds_validate_strictly_against_kubernetes_1_30(values):
    checked = []
    for obj in objects(values):
        if obj["kind"] not in CRD_FILES:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked.append(obj["kind"])
    # the pod templates and the Service KubeRay makes from the RayService are Kubernetes objects too
    for name, template in pod_templates(objects(values)).items():
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                                      "template": template}, K8S_VERSION, strict=True)
    for svc in services(objects(values)):
        kubernetes_validate.validate(svc, K8S_VERSION, strict=True)
    assert {"NetworkPolicy", "PodDisruptionBudget", "ConfigMap", "Service"} <= set(checked)


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, version: str) -> dict:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.exists():
        pytest.skip(f"CRD schemas not found at {CRD_DIR} (set GPTOSS_CRD_DIR); {kind} left unvalidated")
    crd = yaml.load(path.read_text(), Loader=Loader)
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    return _closed(schema)


def _closed(schema):
    """The API server's strict field validation: an object schema with properties rejects unknown fields."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_closed(v) for v in schema]
    return schema


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_custom_resources_validate_against_their_crds(values):
    kinds = set()
    for obj in objects(values):
        if obj["kind"] in CRD_FILES:
            schema = crd_schema(obj["kind"], obj["apiVersion"].split("/")[1])
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, "\n".join(f"{obj['kind']} {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
            kinds.add(obj["kind"])
    assert kinds == set(CRD_FILES)


def test_crd_check_rejects_an_unknown_field():
    bad = objects(None)
    one(bad, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    schema = crd_schema("RayService", "v1")
    assert not jsonschema.Draft7Validator(schema).is_valid(one(bad, "RayService"))


# -- GPUs, autoscaling, volumes ---------------------------------------------------------------------------------------

# values file -> worker group -> (GPUs per pod, min pods, max pods)
GPU_LAYOUT = {
    None: {"gpt-oss-20b": (1, 1, 1)},
    "gpt-oss-20b-1gpu": {"gpt-oss-20b": (1, 1, 4)},
    "gpt-oss-120b-8gpu-tp-ep": {"gpt-oss-120b": (8, 1, 2)},
    "gpt-oss-120b-2node-ep": {"gpt-oss-120b": (8, 2, 2)},  # one replica = 2 pods of 8 GPUs (TP 8 x DP 2, EP 16)
    "two-models": {"gpt-oss-20b": (1, 2, 2), "gpt-oss-120b": (1, 1, 3)},
    "gpt-oss-20b-grpc-mtls": {"gpt-oss-20b": (1, 1, 2)},
}


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_gpu_worker_groups_follow_the_parallel_sizes(values):
    rc = ray_cluster(objects(values))
    assert rc["enableInTreeAutoscaling"] is True
    layout = {}
    for group in rc["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"]
        assert group["replicas"] == group["minReplicas"]
        layout[group["groupName"]] = (int(limits["nvidia.com/gpu"]), group["minReplicas"], group["maxReplicas"])
    assert layout == GPU_LAYOUT[values.stem if values else None]
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_serve_replicas_ask_for_the_gpus_their_pods_hold(values):
    objs = objects(values)
    groups = {g["groupName"]: g for g in ray_cluster(objs)["workerGroupSpecs"]}
    for spec in serve_config(objs)["applications"][0]["args"]["config"]["models"]:
        p = spec["parallel"]
        world = p["tensor_parallel_size"] * p.get("data_parallel_size", 1)
        pod_gpus = int(groups[spec["name"]]["template"]["spec"]["containers"][0]["resources"]["limits"]
                       ["nvidia.com/gpu"])
        if world == pod_gpus:
            assert spec["num_gpus"] == world  # the replica's actor holds all its GPUs
        else:
            assert world % pod_gpus == 0 and spec["num_gpus"] == 0
            assert p["distributed_executor_backend"] == "ray"  # ranks on other pods through Ray's executor
        replicas = (spec["num_replicas"],) * 2 if "num_replicas" in spec else (
            spec["autoscaling"]["min_replicas"], spec["autoscaling"]["max_replicas"])
        pods = world // pod_gpus
        assert (groups[spec["name"]]["minReplicas"], groups[spec["name"]]["maxReplicas"]) == \
               (replicas[0] * pods, replicas[1] * pods)


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_shared_memory_and_model_volumes(values):
    objs = objects(values)
    raw = yaml.safe_load(values.read_text()) if values else {}
    for name, template in pod_templates(objs).items():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["name"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["dshm"]["mountPath"] == "/dev/shm"
        if name == "head":
            assert "models" not in volumes
            continue
        assert mounts["models"]["readOnly"] is True
        claim = raw.get("modelVolume", {}).get("persistentVolumeClaim")
        if claim:
            assert volumes["models"]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        else:
            assert volumes["models"]["hostPath"]["path"] == raw.get("modelVolume", {}).get("hostPath", "/models")


def test_node_selectors_and_tolerations_reach_the_worker_pods():
    spec = pod_templates(render(CI["gpt-oss-20b-1gpu"]))["gpt-oss-20b"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    spec = pod_templates(render(CI["gpt-oss-120b-2node-ep"]))["gpt-oss-120b"]["spec"]
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "dedicated"]


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_probes_on_every_ray_container(values):
    for template in pod_templates(objects(values)).values():
        container = template["spec"]["containers"][0]
        for probe in ("livenessProbe", "readinessProbe"):
            command = " ".join(container[probe]["exec"]["command"])
            assert "52365/api/local_raylet_healthz" in command  # the agent, not the dashboard


# -- ports: API only, never Ray's dashboard or GCS ------------------------------------------------------------------


def container_ports(objs) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for t in pod_templates(objs).values()
            for c in t["spec"]["containers"] for p in c.get("ports", [])}


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_no_service_exposes_the_dashboard_or_gcs(values):
    objs = objects(values)
    named = container_ports(objs)
    forbidden = {RAY_DASHBOARD_PORT, RAY_GCS_PORT}
    for svc in services(objs):
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert {port["port"], named.get(target, target)}.isdisjoint(forbidden), svc["metadata"]["name"]
    api = next(s for s in services(objs) if s["metadata"]["name"] == f"{RELEASE}-gptoss-serve-api")
    assert [p["port"] for p in api["spec"]["ports"]] == [8000]


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_network_policy_lets_clients_reach_only_the_api(values):
    objs = objects(values)
    policy = one(objs, "NetworkPolicy")
    named = container_ports(objs)
    release_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gptoss-serve",
                                                    "app.kubernetes.io/instance": RELEASE}}}
    operator = {"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "kuberay-operator"}}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    opened = []
    for rule in policy["spec"]["ingress"]:
        ports = {named.get(p["port"], p["port"]) for p in rule.get("ports", [])}
        assert ports.isdisjoint({RAY_DASHBOARD_PORT, RAY_GCS_PORT})
        if not ports:  # any port: only the release's own Ray pods and the KubeRay operator
            assert rule["from"] in ([release_pods], [operator])
        else:
            opened.append(ports)
    grpc = {50051} if values is not None and "grpc" in values.stem else set()
    assert opened == [{8000} | grpc, {8000, 8080}]  # clients: the API (HTTP, gRPC); scrapers: /metrics, Ray's


# -- security -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_everything_runs_as_non_root_without_privileges(values):
    objs = objects(values)
    rc = ray_cluster(objs)
    contexts = [rc["autoscalerOptions"]["securityContext"]]
    for template in pod_templates(objs).values():
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        contexts += [c["securityContext"] for c in template["spec"]["containers"]]
    for ctx in contexts:
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
        assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    for name, template in pod_templates(objs).items():
        assert template["spec"].get("automountServiceAccountToken", True) is (name == "head")  # autoscaler only


def test_api_keys_come_from_the_existing_secret():
    objs = render(CI["gpt-oss-20b-1gpu"], set=["auth.existingSecret=team-keys", "auth.apiKeysKey=keys.txt"])
    assert not of_kind(objs, "Secret")  # the chart never creates or holds keys
    auth = serve_config(objs)["applications"][0]["args"]["config"]["auth"]
    assert auth == {"api_keys_file": "/etc/gptoss/auth/keys.txt", "api_keys_env": "GPTOSS_METRICS_API_KEY",
                    "reload_interval_s": 5, "rotation_grace_s": 3600}
    for template in pod_templates(objs).values():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["api-keys"]["secret"]["secretName"] == "team-keys"
        assert volumes["api-keys"]["secret"]["items"] == [{"key": "keys.txt", "path": "keys.txt"}]
        container = template["spec"]["containers"][0]
        assert {"name": "api-keys", "mountPath": "/etc/gptoss/auth", "readOnly": True} in container["volumeMounts"]
        env = {e["name"]: e for e in container["env"]}
        assert env["GPTOSS_METRICS_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "team-keys",
                                                                              "key": "metrics-api-key"}
    endpoint = one(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "team-keys",
                                                                           "key": "metrics-api-key"}}


def test_without_a_secret_nothing_refers_to_one():
    objs = render()
    text = json.dumps(objs)
    assert "secretKeyRef" not in text and '"secret":' not in text and "authorization" not in text
    assert "auth" not in serve_config(objs)["applications"][0]["args"]["config"]


# -- monitoring objects ---------------------------------------------------------------------------------------------


def test_monitors_scrape_the_head_api_and_every_ray_pod():
    objs = render(set=["api.routePrefix=/llm"])
    monitor = one(objs, "ServiceMonitor")
    (svc,) = [s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "ray-head"  # one target: the hub's view
    assert monitor["spec"]["endpoints"][0]["path"] == "/llm/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    pods = one(objs, "PodMonitor")
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert "app.kubernetes.io/component" not in pods["spec"]["selector"]["matchLabels"]  # head and workers


def test_dashboard_configmap_carries_the_dashboard_for_the_sidecar():
    cm = one(render(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["gptoss-serve.json"]) == json.loads((CHART / "files/dashboard.json").read_text())


def test_prometheus_rule_is_the_alert_file_with_the_slo_from_values(tmp_path):
    (tmp_path / "slo.yaml").write_text("metrics: {prometheusRule: {ttftP99SloSeconds: 0.75}}")
    rules = one(render(tmp_path / "slo.yaml"), "PrometheusRule")["spec"]["groups"]
    source = yaml.safe_load((CHART / "files/alerts.yaml").read_text())["groups"]
    assert [g["name"] for g in rules] == [g["name"] for g in source]
    for got, want in zip(rules, source):
        if got["name"] == "gptoss-slo":
            assert got["rules"] == [{"record": "gptoss:slo_ttft_p99_seconds", "expr": "vector(0.75)"}]
        else:
            assert got == want


def test_pod_disruption_budgets_per_worker_group():
    budgets = of_kind(render(CI["two-models"]), "PodDisruptionBudget")
    assert sorted(b["spec"]["selector"]["matchLabels"]["gptoss-serve/model"] for b in budgets) == \
           ["gpt-oss-120b", "gpt-oss-20b"]
    assert all(b["spec"]["maxUnavailable"] == 1 for b in budgets)
    head = [b for b in of_kind(render(CI["gpt-oss-120b-2node-ep"]), "PodDisruptionBudget")
            if b["metadata"]["name"].endswith("-head")]
    assert head[0]["spec"] == {"maxUnavailable": 0, "selector": {"matchLabels": {
        "app.kubernetes.io/name": "gptoss-serve", "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "ray-head"}}}


@pytest.mark.parametrize("setting, kinds", [
    ("networkPolicy.enabled", ["NetworkPolicy"]),
    ("podDisruptionBudget.enabled", ["PodDisruptionBudget"]),
    ("metrics.serviceMonitor.enabled", ["ServiceMonitor", "Service"]),
    ("metrics.podMonitor.enabled", ["PodMonitor"]),
    ("metrics.prometheusRule.enabled", ["PrometheusRule"]),
    ("grafana.dashboard.enabled", ["ConfigMap"]),
])
def test_disabled_renders_nothing(setting, kinds):
    assert all(of_kind(render(), kind) for kind in kinds)
    objs = render(set=[f"{setting}=false"])
    assert not any(of_kind(objs, kind) for kind in kinds)
    assert of_kind(objs, "RayService")


def test_pod_templates_carry_no_chart_version():
    """A chart upgrade alone must not roll a new Ray cluster: pod labels hold no chart or app version."""
    for template in pod_templates(render()).values():
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(template["metadata"]["labels"])


@pytest.mark.parametrize("auth", [False, True])
def test_notes_say_how_to_reach_the_api(auth):
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    proc = helm(*args, *(["--set", "auth.existingSecret=team-keys"] if auth else []))
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert f"http://{RELEASE}-gptoss-serve-api.{NAMESPACE}.svc:8000/v1" in notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-gptoss-serve-api 8000:8000" in notes
    assert ('"model": "gpt-oss-20b"' in notes) and ("/v1/chat/completions" in notes)
    assert ("get secret team-keys" in notes) is auth
    assert ("WARNING: auth.existingSecret is empty" in notes) is not auth


def test_every_values_key_is_documented():
    """helm-docs style: each key has a `# --` comment, or each key under it has (a documented map is opaque)."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()

    def documented(line: int) -> bool:
        above = line - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            if lines[above].lstrip().startswith("# --"):
                return True
            above -= 1
        return False

    def walk(node, path):
        for key, value in node.value:
            where = f"{path}.{key.value}".lstrip(".")
            if documented(key.start_mark.line):
                continue
            assert isinstance(value, yaml.MappingNode) and value.value, f"values.yaml: {where} has no '# --' comment"
            walk(value, where)

    walk(yaml.compose(text), "")
