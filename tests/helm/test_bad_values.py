"""Values that must not render: `helm template` fails with a message that names the value and what to change.

The schema (values.schema.json) catches single-field mistakes; the templates' `fail` catches what spans fields.
"""

import pytest
import yaml

from tests.helm.chart import template_error

MODEL_120B = {"name": "gpt-oss-120b", "path": "/models/gpt-oss-120b"}


def model(**overrides) -> dict:
    return {"models": [{**MODEL_120B, **overrides}]}


CASES = {
    # TP x DP (the expert-parallel size) does not fit the GPUs per pod
    "gpus-per-pod-below-tp": (
        model(parallel={"tensorParallelSize": 8, "enableExpertParallel": True}, gpusPerPod=4),
        ["models[0] (gpt-oss-120b): gpusPerPod 4 does not fit parallel.tensorParallelSize 8 x dataParallelSize 1",
         "expert parallel over all 8", "set gpusPerPod to 8"]),
    "gpus-per-pod-not-a-divisor": (
        model(parallel={"tensorParallelSize": 4, "dataParallelSize": 2, "enableExpertParallel": True}, gpusPerPod=6),
        ["gpusPerPod 6 does not fit", "= 8 GPUs per replica", "a multiple of 4 GPUs", "set gpusPerPod to 4"]),
    "missing-model-path": (
        {"models": [{"name": "gpt-oss-20b"}]},
        ["models[0] (gpt-oss-20b).path is required", "under modelVolume.mountPath (e.g. /models/gpt-oss-20b)"]),
    "missing-model-name": (
        {"models": [{"path": "/models/x"}]}, ["models[0].name is required"]),
    "path-outside-the-model-volume": (
        model(path="/data/gpt-oss-120b"),
        ["path /data/gpt-oss-120b is not under modelVolume.mountPath /models", "set path to /models/<directory>"]),
    "negative-replicas": (
        model(replicas={"min": -1, "max": 2}), ["at '/models/0/replicas/min': minimum: got -1, want 1"]),
    "min-above-max": (
        model(replicas={"min": 3, "max": 2}), ["replicas.min 3 is above replicas.max 2; raise max or lower min"]),
    "zero-tensor-parallel": (
        model(parallel={"tensorParallelSize": 0}), ["at '/models/0/parallel/tensorParallelSize': minimum: got 0"]),
    "duplicate-model-names": (
        {"models": [MODEL_120B, MODEL_120B]}, ["models[1] (gpt-oss-120b): the name is used by another model"]),
    "no-models": ({"models": []}, ["at '/models': minItems: got 0, want 1"]),
    "chart-owned-serve-key": (
        model(serve={"num_gpus": 2}), ["models[0] (gpt-oss-120b).serve.num_gpus is written by the chart",
                                       "remove it from serve"]),
    "chart-owned-autoscaling-bound": (
        model(serve={"autoscaling": {"max_replicas": 9}}), ["min_replicas/max_replicas come from replicas.min/max"]),
    "chart-owned-config-key": (
        {"config": {"http": {"port": 9000}}}, ["config.http is written by the chart", "remove it from config"]),
    "chart-owned-grpc-config": (
        {"config": {"grpc": {"enabled": True}}}, ["config.grpc is written by the chart", "grpc.settings"]),
    "chart-owned-grpc-setting": (
        {"grpc": {"enabled": True, "settings": {"host": "0.0.0.0"}}},
        ["grpc.settings.host is written by the chart", "remove it"]),
    "grpc-mtls-without-a-certificate": (
        {"grpc": {"enabled": True, "tls": {"clientAuth": True}}}, ["grpc.tls.clientAuth needs grpc.tls.secretName"]),
    "grpc-on-the-api-port": (
        {"grpc": {"enabled": True, "port": 8000}}, ["grpc.port 8000 is also api.port or metrics.rayPort"]),
    "grpc-on-the-gcs-port": ({"grpc": {"enabled": True, "port": 6379}}, ["grpc.port 6379 is Ray's port for GCS"]),
    "typo-in-a-key": (
        model(replica={"min": 1}), ["at '/models/0'", "additional properties 'replica' not allowed"]),
    "api-on-the-dashboard-port": (
        {"api": {"port": 8265}}, ["api.port 8265 is Ray's port for the dashboard", "choose another"]),
    "metrics-on-the-gcs-port": ({"metrics": {"rayPort": 6379}}, ["metrics.rayPort 6379 is Ray's port for GCS"]),
    "root-user": ({"securityContext": {"runAsUser": 0}}, ["at '/securityContext/runAsUser': minimum: got 0"]),
    "no-model-volume": (
        {"modelVolume": {"hostPath": "", "persistentVolumeClaim": ""}},
        ["modelVolume needs persistentVolumeClaim", "or hostPath"]),
    # the cluster config's own types and ranges (values.schema.json's config, serve and grpc.settings parts are
    # generated from cluster/config.py, see test_chart_schema.py)
    "config-range": (
        {"config": {"limits": {"request_timeout_s": -1}}}, ["at '/config/limits/request_timeout_s'", "-1"]),
    "config-typo": ({"config": {"limitz": {}}}, ["at '/config'", "additional properties 'limitz' not allowed"]),
    "serve-engine-type": (
        model(serve={"engine": {"max_num_seqs": "many"}}), ["at '/models/0/serve/engine/max_num_seqs'"]),
    "grpc-setting-range": (
        {"grpc": {"enabled": True, "settings": {"max_concurrent_streams": 0}}},
        ["at '/grpc/settings/max_concurrent_streams'"]),
    "auth-without-a-scrape-key": (
        {"auth": {"existingSecret": "keys", "metricsKeyKey": ""}},
        ["set auth.metricsKeyKey", "or metrics.serviceMonitor.enabled: false"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_values_fail_with_a_message_that_says_what_to_change(case, tmp_path):
    values, expected = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(values))
    message = " ".join(template_error(path).split())  # helm wraps long messages
    for text in expected:
        assert text in message, f"{text!r} not in helm's message:\n{message}"
