"""The response store in the chart: the PostgreSQL connection string comes from an existing Secret into every Ray
container's environment, and the cluster config names that variable; without it nothing changes. Oracles: the real
helm, and the cluster's own config loader and ResponsesConfig.dsn() reading the rendered environment."""

from cluster.config import load_config
from tests.helm.chart import pod_templates, render, serve_config, template_error

STORE = ("responseStore.dsnSecret=gptoss-pg", "responseStore.dsnKey=url")


def _config(objs):
    return load_config(serve_config(objs)["applications"][0]["args"]["config"])


def test_the_dsn_comes_from_the_secret_into_every_ray_container(monkeypatch):
    objs = render(set=STORE)
    config = _config(objs)
    assert config.responses.store_dsn_env == "GPTOSS_STORE_DSN" and config.responses.store_dsn is None
    templates = pod_templates(objs)
    assert templates
    for name, template in templates.items():
        env = {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}
        assert env["GPTOSS_STORE_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "gptoss-pg", "key": "url"}}, name
    monkeypatch.setenv("GPTOSS_STORE_DSN", "postgresql://u@db:5432/r")
    assert config.responses.dsn() == "postgresql://u@db:5432/r"


def test_other_response_settings_are_kept_and_the_chart_owned_ones_refused():
    config = _config(render(set=(*STORE, "config.responses.store_ttl=3600")))
    assert config.responses.store_ttl == 3600 and config.responses.store_dsn_env == "GPTOSS_STORE_DSN"
    error = template_error(set=(*STORE, "config.responses.store_dsn=postgresql://x"))
    assert "config.responses.store_dsn is written by the chart" in error


def test_without_a_secret_nothing_is_added():
    objs = render()
    assert _config(objs).responses.store_dsn_env is None
    for template in pod_templates(objs).values():
        assert "GPTOSS_STORE_DSN" not in str(template)
