"""serveConfigV2 as the chart renders it is the cluster's own config: the cluster package loads and validates it.

Oracle: cluster.config (`load_config`, `serve_config`), the code `gptoss serve --print-serve-config` runs. The
rendered Serve config must equal what serve_config makes of the same application config, and every value the chart
wrote must survive loading.
"""

import copy

import pytest

from cluster.config import load_config, serve_config
from tests.helm.chart import CI, CI_VALUES, render, values_id
from tests.helm.chart import serve_config as rendered_serve_config

VALUES = [None, *CI_VALUES]


def app_config(values) -> tuple[dict, dict]:
    rendered = rendered_serve_config(render(*([values] if values else [])))
    return rendered, rendered["applications"][0]["args"]["config"]


def assert_subset(written, loaded, where="config"):
    """Every value the chart wrote is in the loaded config (which adds the defaults)."""
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in loaded, f"{where}.{key} lost"
            assert_subset(value, loaded[key], f"{where}.{key}")
    elif isinstance(written, list):
        assert len(written) == len(loaded), where
        for i, (w, l) in enumerate(zip(written, loaded)):
            assert_subset(w, l, f"{where}[{i}]")
    else:
        assert written == loaded, f"{where}: wrote {written!r}, loaded {loaded!r}"


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_serve_config_v2_loads_with_the_cluster_code(values):
    rendered, config = app_config(values)
    check_against_cluster(rendered, config, load_config(config))


def check_against_cluster(rendered: dict, config: dict, loaded) -> None:
    assert_subset(config, loaded.to_dict())
    expected = serve_config(loaded)
    expected["applications"][0]["args"]["config"] = config  # serve_config writes every default out
    rendered = copy.deepcopy(rendered)
    rendered["applications"][0]["args"]["config"] = config
    assert rendered == expected


def test_values_reach_the_cluster_config():
    _, config = app_config(CI["gpt-oss-20b-1gpu"])
    loaded = load_config(config)
    (spec,) = loaded.models
    assert (spec.engine.max_num_seqs, spec.engine.max_model_len, spec.max_ongoing_requests) == (128, 32768, 128)
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (1, 4)
    assert spec.autoscaling.target_ongoing_requests == 32
    assert (spec.device, spec.num_gpus, spec.path) == ("cuda", 1.0, "/models/gpt-oss-20b")
    assert (loaded.http.host, loaded.http.port) == ("0.0.0.0", 8000)  # reachable from other pods
    assert loaded.auth.api_keys == []  # keys only by reference: a file from the Secret and an env var


def test_route_prefix_and_application_settings():
    rendered, config = app_config(CI["two-models"])
    assert rendered["applications"][0]["route_prefix"] == "/llm" == config["http"]["route_prefix"]
    loaded = load_config(config)
    assert [m.name for m in loaded.models] == ["gpt-oss-20b", "gpt-oss-120b"]
    assert loaded.ingress_replicas == 2 and loaded.limits.request_timeout_s == 300


def test_expert_parallel_layouts_say_what_they_need():
    _, config = app_config(CI["gpt-oss-120b-8gpu-tp-ep"])
    assert config["models"][0]["parallel"] == {"tensor_parallel_size": 8, "enable_expert_parallel": True}
    assert config["models"][0]["num_gpus"] == 8
    _, config = app_config(CI["gpt-oss-120b-2node-ep"])
    assert config["models"][0]["parallel"] == {"tensor_parallel_size": 8, "data_parallel_size": 2,
                                               "enable_expert_parallel": True, "distributed_executor_backend": "ray"}
