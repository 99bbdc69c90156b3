"""The application config: loading, bad values named by their path, and the Serve config it emits."""

import json

import pytest
import yaml

from cluster.app import llm_deployment_options
from cluster.config import AppConfig, ConfigError, default_config_yaml, load_config, serve_config
from engine.cli import main

MODEL = {"name": "m", "path": "/models/m"}


def test_minimal_config_gets_documented_defaults():
    config = load_config({"models": [MODEL]})
    assert isinstance(config, AppConfig) and config.http.host == "127.0.0.1"
    assert config.models[0].parallel.tensor_parallel_size == 1 and config.models[0].autoscaling is None
    assert config.models[0].engine_kwargs()["model"] == "/models/m"


@pytest.mark.parametrize("data,words", [
    ({}, "models: List should have at least 1 item"),
    ({"models": [{"path": "/x"}]}, "models[0].name: missing required key"),
    ({"models": [MODEL], "bogus": 1}, "bogus: unknown key; known keys here: ['auth', "),
    ({"models": [{**MODEL, "dtype": "fp8"}]}, "models[0].dtype: Input should be 'float32' or 'bfloat16' (got 'fp8')"),
    ({"models": [{**MODEL, "parallel": {"tensor_parallel_size": 0}}]},
     "models[0].parallel.tensor_parallel_size: Input should be greater than or equal to 1 (got 0)"),
    ({"models": [{**MODEL, "device": "cuda", "num_gpus": 1, "parallel": {"tensor_parallel_size": 2}}]},
     "models[0].num_gpus must be 2 (tensor_parallel_size x data_parallel_size)"),
    ({"models": [{**MODEL, "num_gpus": 2, "parallel": {"tensor_parallel_size": 2,
                                                       "distributed_executor_backend": "ray"}}]},
     "models[0].num_gpus must be 0 with distributed_executor_backend ray"),
    ({"models": [{**MODEL, "parallel": {"tensor_parallel_size": 2, "moe_dispatch": "alltoall"}}]},
     "models[0].parallel.moe_dispatch='alltoall' sends tokens to the ranks that hold their experts, which needs "
     "enable_expert_parallel=True"),
    ({"models": [{**MODEL, "engine": {"block_size": 12}}]}, "models[0].engine.block_size must be a power of two"),
    ({"models": [{**MODEL, "engine": {"max_num_seqs": "many"}}]},
     "models[0].engine.max_num_seqs: Input should be a valid integer (got 'many')"),
    ({"models": [{**MODEL, "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]},
     "models[0].autoscaling.max_replicas (2) must be >= min_replicas (3)"),
    ({"models": [MODEL, MODEL]}, "models[].name must be unique"),
    ({"models": [MODEL], "http": {"port": 70000}}, "http.port: Input should be less than or equal to 65535"),
    ({"models": [MODEL], "limits": {"request_timeout_s": 0}}, "limits.request_timeout_s: Input should be greater "
                                                              "than 0"),
    ({"models": [MODEL], "auth": {"api_keys": ["short"]}}, "auth.api_keys[0] (hidden) must be at least 8"),
    ({"models": [{**MODEL, "num_replicas": True}]}, "models[0].num_replicas: Input should be a valid integer"),
    ({"models": [{**MODEL, "max_ongoing_requests": 8}]},
     "models[0].max_ongoing_requests (8) must be >= what the engine batches (256"),
    ({"models": [MODEL], "ingress_max_ongoing_requests": 10}, "ingress_max_ongoing_requests (10) must be >= 768"),
])
def test_bad_values_name_the_field(data, words):
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert words in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config({"models": [{**MODEL, "dtype": "fp8", "engine": {"max_num_seqs": 0}}], "http": {"port": 0}})
    lines = str(err.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["models[0].dtype", "models[0].engine.max_num_seqs", "http.port"]


def test_no_hidden_caps_on_the_request_path():
    """The ingress holds what every model's replicas and router queues can (so it never queues first), and a
    replica takes what its engine batches, twice over."""
    config = load_config({"models": [{**MODEL, "engine": {"max_num_seqs": 64},
                                      "autoscaling": {"min_replicas": 1, "max_replicas": 3}},
                                     {**MODEL, "name": "n", "parallel": {"data_parallel_size": 2}}],
                          "limits": {"max_queued_requests": 100}, "ingress_replicas": 2})
    m, n = config.models
    assert (m.replica_capacity, n.replica_capacity) == (128, 1024)
    assert config.ingress_max_ongoing() == -(-(3 * 128 + 100 + 1024 + 100) // 2) + 32
    from cluster.app import llm_deployment_options

    assert llm_deployment_options(m, config)["max_ongoing_requests"] == 128
    unbounded = load_config({"models": [MODEL], "limits": {"max_queued_requests": -1}})
    assert unbounded.ingress_max_ongoing() > 10_000


def test_yaml_and_json_files(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"models": [MODEL]}))
    (tmp_path / "a.json").write_text(json.dumps({"models": [MODEL]}))
    (tmp_path / "bad.yaml").write_text("models: [\n")
    assert load_config(tmp_path / "a.yaml") == load_config(tmp_path / "a.json")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(tmp_path / "bad.yaml")


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("file-key-0123456789\n\n")
    monkeypatch.setenv("MY_KEYS", "env-key-0123456789, other-key-012345")
    auth = load_config({"models": [MODEL], "auth": {"api_keys_env": "MY_KEYS", "api_keys_file": str(keys)}}).auth
    assert auth.resolve() == ["env-key-0123456789", "other-key-012345", "file-key-0123456789"]
    monkeypatch.delenv("MY_KEYS")
    with pytest.raises(ConfigError, match="MY_KEYS"):
        auth.resolve()  # a named source that is missing never means "no auth"


def test_serve_config_round_trips_through_build_args():
    config = load_config({"models": [{**MODEL, "autoscaling": {"max_replicas": 4}}], "http": {"port": 9000}})
    out = serve_config(config)
    app = out["applications"][0]
    assert app["import_path"] == "cluster.app:build_app" and out["http_options"]["port"] == 9000
    assert load_config(app["args"]["config"]) == config  # what KubeRay hands build_app is the same config
    yaml.safe_load(yaml.safe_dump(out))  # plain data only


def test_deployment_options_follow_the_config():
    config = load_config({"models": [{**MODEL, "autoscaling": {"min_replicas": 1, "max_replicas": 3,
                                                                "target_ongoing_requests": 4}}],
                          "limits": {"max_queued_requests": 7}})
    options = llm_deployment_options(config.models[0], config)
    assert options["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in options
    assert options["max_queued_requests"] == 7
    assert options["request_router_config"].request_router_class == "cluster.router:PrefixAffinityRouter"
    fixed = load_config({"models": [{**MODEL, "num_replicas": 2, "routing": {"prefix_affinity": False}}]})
    options = llm_deployment_options(fixed.models[0], fixed)
    assert options["num_replicas"] == 2 and "request_router_config" not in options


def test_cli_prints_default_and_serve_config(tmp_path, capsys):
    assert main(["serve", "--print-default-config"]) == 0
    assert "target_ongoing_requests" in capsys.readouterr().out
    assert default_config_yaml().count("# ") > 40  # every field documented
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"models": [MODEL]}))
    assert main(["serve", "--print-serve-config", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["applications"][0]["args"]["config"]["models"][0]["path"] == "/models/m"  # as written
    path.write_text(yaml.safe_dump({"models": [{**MODEL, "dtype": "int3"}]}))
    assert main(["serve", "--print-serve-config", str(path)]) == 2
    assert "models[0].dtype" in capsys.readouterr().err


def test_parallel_replicas_reserve_their_ranks():
    from cluster.app import llm_deployment_options

    ray_ranks = {"tensor_parallel_size": 8, "data_parallel_size": 2, "enable_expert_parallel": True,
                 "distributed_executor_backend": "ray", "placement_strategy": "SPREAD"}
    config = load_config({"models": [{**MODEL, "device": "cuda", "num_cpus": 4, "parallel": ray_ranks}]})
    spec = config.models[0]
    options = llm_deployment_options(spec, config)
    assert options["placement_group_bundles"] == [{"CPU": 4.0}] + [{"CPU": 1.0, "GPU": 1}] * 16
    assert options["placement_group_strategy"] == "SPREAD"
    assert options["ray_actor_options"] == {"num_cpus": 4.0, "num_gpus": 0.0}  # fits bundle 0
    kwargs = spec.engine_kwargs()
    assert (kwargs["tensor_parallel_size"], kwargs["data_parallel_size"], kwargs["distributed_executor_backend"]) \
        == (8, 2, "ray")

    local = load_config({"models": [{**MODEL, "device": "cuda", "num_gpus": 4,
                                     "parallel": {"tensor_parallel_size": 4}}]})
    options = llm_deployment_options(local.models[0], local)
    assert "placement_group_bundles" not in options and options["ray_actor_options"]["num_gpus"] == 4
    assert local.models[0].engine_kwargs()["distributed_executor_backend"] == "mp"
    assert "tensor_parallel_size" not in load_config({"models": [MODEL]}).models[0].engine_kwargs()
