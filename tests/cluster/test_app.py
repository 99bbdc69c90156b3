"""The application's build: the front doors' arguments do not change with a model's replica-only settings, so Serve
rolls only the LLMServer replicas on such a redeploy (the ingress, the gateway and their connections stay)."""

from cluster.app import front_door_config
from cluster.config import load_config
from tests.cluster.conftest import model_entry


def config(**model) -> dict:
    return {"name": "app", "grpc": {"enabled": True}, "models": [model_entry("tiny", "/m", **model)]}


def test_replica_only_settings_leave_the_front_doors_alone():
    base = front_door_config(load_config(config()))
    for change in ({"engine": {"max_num_seqs": 8}}, {"num_replicas": 3}, {"num_cpus": 2},
                   {"autoscaling": {"min_replicas": 1, "max_replicas": 4}}, {"default_max_tokens": 9},
                   {"health_check_period_s": 7}, {"parallel": {"tensor_parallel_size": 2}}):
        assert front_door_config(load_config(config(**change))) == base, change


def test_what_front_doors_read_still_reaches_them():
    changed = front_door_config(load_config(config(routing={"prefix_affinity": False},
                                                   graceful_shutdown_timeout_s=5)))
    assert changed != front_door_config(load_config(config()))
    door = load_config(changed)                      # a valid config in its own right
    assert [m.name for m in door.models] == ["tiny"] and door.model("tiny").routing.prefix_affinity is False
    assert door.graceful_shutdown_timeout_s == 5 and door.grpc.enabled
